"""Building blocks shared by every tower: attention, MLP, transformer blocks, position embeddings.

Every parameter carries `logical_axes` metadata (names such as 'embed', 'mlp', 'heads',
'vocab'); `vlpjax.parallel.partitioning` maps those names onto mesh axes. Models never
see devices.

Attention masks are `vlpjax.models.attention.Mask`s (real keys, causality, other patterns);
the kernel is `model.attention` (xla | cudnn). Logits and softmax run in float32 whatever the
compute dtype, so a masked key gets exactly zero weight.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlpjax.models.attention import Mask, attend, check_kernel, key_padding
from vlpjax.models.logical import constrain

Array = jax.Array


class Encoded(NamedTuple):
    """What every encoder returns: per-token features, a pooled vector, and the token mask."""

    tokens: Array  # [B, T, D]
    pooled: Array  # [B, D]
    mask: Array  # [B, T] bool


def with_axes(init: Callable, axes: tuple[str | None, ...]) -> Callable:
    """Attach logical axis names to an initializer's parameter."""
    return nnx.with_metadata(init, logical_axes=axes)


class Dense(nnx.Module):
    """y = x @ kernel + bias over the last axis, with kernel [in, out] (nnx.Linear's layout).

    Leading axes are flattened into one before the matmul: XLA on CPU computes the kernel
    gradient of a 2-D matmul about twice as fast as that of a [B, L, D] contraction.
    """

    def __init__(
        self, in_dim: int, out_dim: int, *, kernel_init: Callable, bias_init: Callable | None, dtype, rngs: nnx.Rngs
    ):
        self.dtype = dtype
        self.use_bias = bias_init is not None
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_dim, out_dim), jnp.float32))
        self.bias = nnx.Param(bias_init(rngs.params(), (out_dim,), jnp.float32)) if self.use_bias else None

    def __call__(self, x: Array) -> Array:
        kernel = self.kernel[...].astype(self.dtype)
        y = (x.reshape(-1, x.shape[-1]).astype(self.dtype) @ kernel).reshape(*x.shape[:-1], kernel.shape[-1])
        return y + self.bias[...].astype(self.dtype) if self.use_bias else y


def dense(
    in_dim: int,
    out_dim: int,
    axes: tuple[str | None, str | None],
    *,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
    use_bias: bool = True,
    init: Callable = nnx.initializers.xavier_uniform(),
) -> Dense:
    """A linear layer whose kernel is [in, out] with logical axes `axes`."""
    bias_init = with_axes(nnx.initializers.zeros_init(), (axes[1],)) if use_bias else None
    return Dense(in_dim, out_dim, kernel_init=with_axes(init, axes), bias_init=bias_init, dtype=dtype, rngs=rngs)


def float32_logits(head: Dense, x: Array) -> Array:
    """A (bias-free) vocabulary head's logits accumulated in float32 whatever the compute dtype:
    the cross-entropy must not read logits rounded to bfloat16."""
    kernel = head.kernel[...].astype(x.dtype)
    return jnp.einsum("...d,dv->...v", x, kernel, preferred_element_type=jnp.float32)


def layer_norm(dim: int, *, rngs: nnx.Rngs, eps: float = 1e-6, dtype=jnp.float32) -> nnx.LayerNorm:
    """Statistics in float32 whatever `dtype`, the dtype of the output (flax promotes them)."""
    return nnx.LayerNorm(
        dim,
        epsilon=eps,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=with_axes(nnx.initializers.ones_init(), ("norm",)),
        bias_init=with_axes(nnx.initializers.zeros_init(), ("norm",)),
        rngs=rngs,
    )


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # BERT's erf form
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # original CLIP
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def activation(name: str) -> Callable[[Array], Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# --- attention ---------------------------------------------------------------------------


class MultiHeadAttention(nnx.Module):
    """Self- or cross-attention with separate q/k/v projections (the layout BERT and CLIP share)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        kv_dim: int | None = None,
        use_bias: bool = True,
        dtype=jnp.float32,
        attention: str = "xla",
        rngs: nnx.Rngs,
    ):
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        kv_dim = kv_dim or dim
        self.num_heads = num_heads
        self.kernel_name = check_kernel(attention)
        self.query = dense(dim, dim, ("embed", "heads"), use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.key = dense(kv_dim, dim, ("embed", "heads"), use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.value = dense(kv_dim, dim, ("embed", "heads"), use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.out = dense(dim, dim, ("heads", "embed"), use_bias=use_bias, dtype=dtype, rngs=rngs)

    def _heads(self, x: Array) -> Array:
        """[B, L, D] -> [B, L, H, D/H], the heads split over the tensor axis where there is one."""
        return constrain(x.reshape(*x.shape[:-1], self.num_heads, -1), ("batch", "length", "heads", None))

    def _fused_qkv(self, x: Array) -> tuple[Array, Array, Array]:
        """Self-attention: one [D, 3D] matmul instead of three [D, D] ones (faster on CPU)."""
        layers = (self.query, self.key, self.value)
        kernel = jnp.concatenate([layer.kernel[...] for layer in layers], axis=1).astype(self.query.dtype)
        y = (x.reshape(-1, x.shape[-1]).astype(kernel.dtype) @ kernel).reshape(*x.shape[:-1], kernel.shape[-1])
        if self.query.use_bias:
            y = y + jnp.concatenate([layer.bias[...] for layer in layers]).astype(y.dtype)
        return tuple(self._heads(part) for part in jnp.split(y, 3, axis=-1))

    def __call__(self, x: Array, context: Array | None = None, mask: Mask | None = None) -> Array:
        if context is None:
            q, k, v = self._fused_qkv(x)
        else:
            q, (k, v) = self._heads(self.query(x)), self.keys_values(context)
        attended = attend(q, k, v, mask, kernel=self.kernel_name)
        return self.out(attended.reshape(*x.shape[:-1], -1))

    def keys_values(self, context: Array) -> tuple[Array, Array]:
        """The keys and values of `context` [B, S, kv_dim], [B, S, H, D/H] each: what decoding
        caches (a cross-attention memory is computed once per image)."""
        return self._heads(self.key(context)), self._heads(self.value(context))

    def cached_self_attention(self, x: Array, keys: Array, values: Array, mask: Mask, offset: Array):
        """Decoding: x's keys and values written into the cache at slots offset.., then x's
        queries over the whole cache. Returns (output, (keys, values))."""
        q, k, v = self._fused_qkv(x)
        keys = jax.lax.dynamic_update_slice_in_dim(keys, k.astype(keys.dtype), offset, axis=1)
        values = jax.lax.dynamic_update_slice_in_dim(values, v.astype(values.dtype), offset, axis=1)
        attended = attend(q, keys, values, mask, kernel=self.kernel_name)
        return self.out(attended.reshape(*x.shape[:-1], -1)), (keys, values)

    def memory_attention(self, x: Array, keys: Array, values: Array, mask: Mask | None = None) -> Array:
        """Decoding: x's queries over a context's precomputed `keys_values` (its real keys: `mask`)."""
        attended = attend(self._heads(self.query(x)), keys, values, mask, kernel=self.kernel_name)
        return self.out(attended.reshape(*x.shape[:-1], -1))


# A block's output: split over the batch, whole along the sequence and the model dimension.
BLOCK_OUTPUT = ("batch", "length", "embed")


class MLP(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, act: str = "gelu", dtype=jnp.float32, rngs: nnx.Rngs):
        self.act_name = act
        self.fc1 = dense(dim, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = dense(hidden, dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        hidden = constrain(activation(self.act_name)(self.fc1(x)), ("batch", "length", "mlp"))
        return self.fc2(hidden)


def _require_context(context: Array | None) -> None:
    if context is None:
        raise ValueError("this block has cross-attention: pass the tokens it attends to as `context`")


class PreLNBlock(nnx.Module):
    """x + attn(LN(x)) [+ cross_attn(LN(x), context)] + mlp(LN(x)): ViT, CLIP text, fusion layers."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        act: str = "gelu",
        context_dim: int | None = None,
        eps: float = 1e-6,
        dtype=jnp.float32,
        attention: str = "xla",
        rngs: nnx.Rngs,
    ):
        self.ln_attn = layer_norm(dim, eps=eps, dtype=dtype, rngs=rngs)
        self.attn = MultiHeadAttention(dim, num_heads, dtype=dtype, attention=attention, rngs=rngs)
        self.has_cross = context_dim is not None
        if self.has_cross:
            self.ln_cross = layer_norm(dim, eps=eps, dtype=dtype, rngs=rngs)
            self.cross = MultiHeadAttention(
                dim, num_heads, kv_dim=context_dim, dtype=dtype, attention=attention, rngs=rngs
            )
        self.ln_mlp = layer_norm(dim, eps=eps, dtype=dtype, rngs=rngs)
        self.mlp = MLP(dim, mlp_dim, act=act, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        x: Array,
        mask: Mask | None = None,
        context: Array | None = None,
        context_mask: Mask | None = None,
    ) -> Array:
        x = x + self.attn(self.ln_attn(x), mask=mask)
        if self.has_cross:
            _require_context(context)
            x = x + self.cross(self.ln_cross(x), context, mask=context_mask)
        return constrain(x + self.mlp(self.ln_mlp(x)), BLOCK_OUTPUT)

    def step(self, x: Array, past: tuple[Array, Array], mask: Mask, offset: Array, memory=None):
        """`__call__` for new tokens x at cache slots offset..: self-attention over the cached
        keys and values `past`, cross-attention over `memory` (the context's keys and values,
        `cross.keys_values`). Returns (x, the updated (keys, values))."""
        h, past = self.attn.cached_self_attention(self.ln_attn(x), *past, mask, offset)
        x = x + h
        if self.has_cross:
            _require_context(memory)
            x = x + self.cross.memory_attention(self.ln_cross(x), *memory)
        return constrain(x + self.mlp(self.ln_mlp(x)), BLOCK_OUTPUT), past


def pre_ln_blocks(depth: int, dim: int, num_heads: int, mlp_dim: int, **block) -> nnx.List:
    """`depth` PreLNBlocks of one shape (a text tower, a decoder, a single-stream stack)."""
    return nnx.List([PreLNBlock(dim, num_heads, mlp_dim, **block) for _ in range(depth)])


class PostLNBlock(nnx.Module):
    """LN(x + attn(x)) [then LN(x + cross_attn(x, context))] then LN(x + mlp(x)): BERT's layout."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        act: str = "gelu",
        context_dim: int | None = None,
        eps: float = 1e-12,
        dtype=jnp.float32,
        attention: str = "xla",
        rngs: nnx.Rngs,
    ):
        self.attn = MultiHeadAttention(dim, num_heads, dtype=dtype, attention=attention, rngs=rngs)
        self.ln_attn = layer_norm(dim, eps=eps, dtype=dtype, rngs=rngs)
        self.has_cross = context_dim is not None
        if self.has_cross:
            self.cross = MultiHeadAttention(
                dim, num_heads, kv_dim=context_dim, dtype=dtype, attention=attention, rngs=rngs
            )
            self.ln_cross = layer_norm(dim, eps=eps, dtype=dtype, rngs=rngs)
        self.mlp = MLP(dim, mlp_dim, act=act, dtype=dtype, rngs=rngs)
        self.ln_mlp = layer_norm(dim, eps=eps, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        x: Array,
        mask: Mask | None = None,
        context: Array | None = None,
        context_mask: Mask | None = None,
    ) -> Array:
        return self.after_self_attention(self.ln_attn(x + self.attn(x, mask=mask)), context, context_mask)

    def after_self_attention(
        self, x: Array, context: Array | None = None, context_mask: Mask | None = None, memory=None
    ) -> Array:
        """The layer past its self-attention: cross-attention to `context` (or to its cached
        `memory`, (keys, values, key mask)), then the MLP. BLIP's decoder runs this part of the
        encoder's layers after a self-attention of its own."""
        if self.has_cross:
            if memory is None:
                _require_context(context)
                x = self.ln_cross(x + self.cross(x, context, mask=context_mask))
            else:
                keys, values, memory_mask = memory
                x = self.ln_cross(x + self.cross.memory_attention(x, keys, values, memory_mask))
        return constrain(self.ln_mlp(x + self.mlp(x)), BLOCK_OUTPUT)


class MAPHead(nnx.Module):
    """Multi-head attention pooling: one learned probe attends over the tokens, then an MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        act: str = "gelu",
        eps: float = 1e-6,
        dtype=jnp.float32,
        attention: str = "xla",
        rngs: nnx.Rngs,
    ):
        self.probe = nnx.Param(
            with_axes(nnx.initializers.xavier_uniform(), (None, None, "embed"))(rngs.params(), (1, 1, dim))
        )
        self.attn = MultiHeadAttention(dim, num_heads, dtype=dtype, attention=attention, rngs=rngs)
        self.ln = layer_norm(dim, eps=eps, dtype=dtype, rngs=rngs)
        self.mlp = MLP(dim, mlp_dim, act=act, dtype=dtype, rngs=rngs)

    def __call__(self, tokens: Array, mask: Array | None = None) -> Array:
        probe = jnp.broadcast_to(self.probe[...], (tokens.shape[0], 1, tokens.shape[-1])).astype(tokens.dtype)
        x = self.attn(probe, tokens, mask=key_padding(mask))
        x = x + self.mlp(self.ln(x))
        return x[:, 0]


# --- position embeddings -----------------------------------------------------------------


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding [height*width, dim] (MoCo v3 / big_vision form)."""
    if dim % 4:
        raise ValueError(f"sincos2d needs a width divisible by 4, got {dim}")
    y, x = np.mgrid[:height, :width]
    omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4 - 1 if dim > 4 else 1))
    y = y.reshape(-1)[:, None] * omega[None]
    x = x.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


def masked_mean(tokens: Array, mask: Array) -> Array:
    """Mean over real tokens only: [B,T,D], [B,T] -> [B,D]."""
    weights = mask.astype(jnp.float32)[..., None]
    total = jnp.sum(tokens.astype(jnp.float32) * weights, axis=1)
    return (total / jnp.maximum(jnp.sum(weights, axis=1), 1.0)).astype(tokens.dtype)
