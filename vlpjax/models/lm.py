"""Decoder-only language models for the frozen-LM path: GPT-2 and the LLaMA family.

One pre-norm block serves both; the config picks the pieces that differ:

| arch  | positions        | norm      | MLP             | attention              |
| ----- | ---------------- | --------- | --------------- | ---------------------- |
| gpt2  | learned, added   | LayerNorm | gelu_new        | multi-head, with bias  |
| llama | rotary (q and k) | RMSNorm   | SwiGLU (no bias)| grouped-query (n_kv)   |

`DecoderLM(ids, attention_mask)` gives logits [B, L, V]. With a `KVCache` it also returns the
updated cache, so generation feeds one token at a time. The Flamingo model drives the same
pieces (`embed`, `blocks`, `head`) with its cross-attention blocks in between.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlpjax.models.attention import Mask, attend, check_kernel
from vlpjax.models.layers import MLP, activation, dense, layer_norm, with_axes
from vlpjax.models.stack import run_stack

Array = jax.Array
ARCHS = ("gpt2", "llama")


@dataclasses.dataclass(frozen=True)
class DecoderLMConfig:
    arch: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int = 2048
    num_kv_heads: int | None = None  # None: as many as query heads
    head_dim: int | None = None  # None: hidden_size // num_heads
    norm_eps: float = 1e-5
    rope_theta: float = 10_000.0
    tie_embeddings: bool = True
    attention_bias: bool | None = None  # None: the arch's default (gpt2 yes, llama no)
    act: str | None = None  # None: gelu_new for gpt2, silu for llama
    dtype: str = "float32"
    attention: str = "xla"  # the scale switches: see vlpjax.models.attention and .stack
    remat: str = "none"
    scan_layers: bool = False

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown decoder LM arch {self.arch!r}; choose one of {ARCHS}")
        check_kernel(self.attention)
        if self.num_heads % self.kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.kv_heads}")

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dims_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def has_bias(self) -> bool:
        return self.arch == "gpt2" if self.attention_bias is None else self.attention_bias

    @property
    def act_name(self) -> str:
        return self.act or ("gelu_new" if self.arch == "gpt2" else "silu")


class KVCache(NamedTuple):
    """Keys and values of every layer for `max_len` slots, and which slots hold a real token.

    `length` is the number of slots written so far (the same for every row: prompts are
    left-padded, and `valid` marks the padding so nothing attends to it).
    """

    keys: tuple[Array, ...]  # per layer [B, max_len, n_kv, head_dim]
    values: tuple[Array, ...]
    valid: Array  # [B, max_len] bool
    length: Array  # [] int32

    @classmethod
    def empty(cls, config: DecoderLMConfig, batch: int, max_len: int) -> "KVCache":
        return cls.zeros(batch, max_len, config.num_layers, config.kv_heads, config.dims_per_head, config.dtype)

    @classmethod
    def zeros(cls, batch: int, max_len: int, layers: int, heads: int, head_dim: int, dtype) -> "KVCache":
        """An empty cache of `layers` layers' keys and values for `max_len` slots."""
        zeros = tuple(jnp.zeros((batch, max_len, heads, head_dim), jnp.dtype(dtype)) for _ in range(layers))
        return cls(zeros, zeros, jnp.zeros((batch, max_len), bool), jnp.int32(0))

    def written_mask(self, attention_mask: Array) -> Array:
        """[B, max_len] the valid slots once new tokens with `attention_mask` are written at `length`."""
        return jax.lax.dynamic_update_slice_in_dim(self.valid, attention_mask, self.length, axis=1)

    def causal_attention(self, attention_mask: Array) -> tuple[Array, Mask]:
        """(the written mask, the new tokens' causal Mask over every valid slot)."""
        key_mask = self.written_mask(attention_mask)
        return key_mask, causal_mask(key_mask, attention_mask.shape[1], cached=True, offset=self.length)

    def positions(self, attention_mask: Array) -> Array:
        """Position ids of the new tokens: the count of real tokens before each one."""
        before = jnp.sum(self.valid, axis=1, keepdims=True)
        return before + jnp.cumsum(attention_mask, axis=1) - 1

    def expand(self, index: Array) -> "KVCache":
        """Rows `index` of the cache (beam search reorders and repeats rows)."""
        take = lambda x: jnp.take(x, index, axis=0)  # noqa: E731
        return KVCache(tuple(map(take, self.keys)), tuple(map(take, self.values)), take(self.valid), self.length)


# --- pieces ------------------------------------------------------------------------------


class RMSNorm(nnx.Module):
    """x / rms(x) * weight, the statistics in float32 (LLaMA's form: no mean, no bias)."""

    def __init__(self, dim: int, *, eps: float, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = nnx.Param(with_axes(nnx.initializers.ones_init(), ("norm",))(rngs.params(), (dim,)))

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (self.scale[...] * normed.astype(x.dtype)).astype(x.dtype)


def norm_for(config: DecoderLMConfig, rngs: nnx.Rngs) -> nnx.Module:
    if config.arch == "llama":
        return RMSNorm(config.hidden_size, eps=config.norm_eps, rngs=rngs)
    return layer_norm(config.hidden_size, eps=config.norm_eps, dtype=jnp.dtype(config.dtype), rngs=rngs)


def rotate_half(x: Array) -> Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: Array, positions: Array, theta: float) -> Array:
    """x [B, L, H, Dh] rotated by its positions [B, L] (the rotate_half form of HF LLaMA)."""
    dim = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, Dh/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    return (x32 * jnp.cos(angles) + rotate_half(x32) * jnp.sin(angles)).astype(x.dtype)


class LMAttention(nnx.Module):
    """Causal self-attention with grouped-query heads, rotary positions (llama) and a KV cache."""

    def __init__(self, config: DecoderLMConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        dtype = jnp.dtype(c.dtype)
        q_dim, kv_dim = c.num_heads * c.dims_per_head, c.kv_heads * c.dims_per_head
        self.query = dense(c.hidden_size, q_dim, ("embed", "heads"), use_bias=c.has_bias, dtype=dtype, rngs=rngs)
        self.key = dense(c.hidden_size, kv_dim, ("embed", "heads"), use_bias=c.has_bias, dtype=dtype, rngs=rngs)
        self.value = dense(c.hidden_size, kv_dim, ("embed", "heads"), use_bias=c.has_bias, dtype=dtype, rngs=rngs)
        self.out = dense(q_dim, c.hidden_size, ("heads", "embed"), use_bias=c.has_bias, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, positions: Array, key_mask: Array, past: tuple[Array, Array] | None, offset: Array):
        """x [B, L, D]; key_mask [B, S] over the S key slots (S = L without a cache, the cache
        size with one); `offset` is the slot of x's first token. Returns (y, (keys, values))."""
        c = self.config
        b, length, _ = x.shape
        q = self.query(x).reshape(b, length, c.num_heads, c.dims_per_head)
        k = self.key(x).reshape(b, length, c.kv_heads, c.dims_per_head)
        v = self.value(x).reshape(b, length, c.kv_heads, c.dims_per_head)
        if c.arch == "llama":
            q, k = apply_rotary(q, positions, c.rope_theta), apply_rotary(k, positions, c.rope_theta)
        if past is not None:
            k = jax.lax.dynamic_update_slice_in_dim(past[0], k.astype(past[0].dtype), offset, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(past[1], v.astype(past[1].dtype), offset, axis=1)
        mask = causal_mask(key_mask, length, cached=past is not None, offset=offset)
        y = attend(q, k, v, mask, kernel=c.attention)
        return self.out(y.reshape(b, length, -1)), (k, v)


def causal_mask(key_mask: Array, length: int, *, cached: bool, offset: Array) -> Mask:
    """Queries at slots offset..offset+L-1 over the key slots [B, S] of `key_mask`.

    Without a cache the keys are the queries themselves (right-padded text): real keys and the
    causal flag, the form a fused kernel takes. With one, the prompt is left-padded inside the
    cache, so the pattern is spelt out."""
    if not cached:
        return Mask(keys=key_mask, causal=True)
    query_slot = offset + jnp.arange(length)[:, None]
    allowed = (jnp.arange(key_mask.shape[1])[None, :] <= query_slot)[None, None] & key_mask[:, None, None, :]
    return Mask(pairs=allowed)


class SwiGLU(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, act: str, dtype, rngs: nnx.Rngs):
        self.act_name = act
        self.gate = dense(dim, hidden, ("embed", "mlp"), use_bias=False, dtype=dtype, rngs=rngs)
        self.up = dense(dim, hidden, ("embed", "mlp"), use_bias=False, dtype=dtype, rngs=rngs)
        self.down = dense(hidden, dim, ("mlp", "embed"), use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.down(activation(self.act_name)(self.gate(x)) * self.up(x))


class DecoderBlock(nnx.Module):
    """x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: DecoderLMConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.dtype)
        self.ln_attn = norm_for(config, rngs)
        self.attn = LMAttention(config, rngs=rngs)
        self.ln_mlp = norm_for(config, rngs)
        mlp = SwiGLU if config.arch == "llama" else MLP  # GPT-2: fc1 -> gelu_new -> fc2
        self.mlp = mlp(config.hidden_size, config.intermediate_size, act=config.act_name, dtype=dtype, rngs=rngs)

    def __call__(self, x, positions, key_mask, past, offset):
        y, kv = self.attn(self.ln_attn(x), positions, key_mask, past, offset)
        x = x + y
        return x + self.mlp(self.ln_mlp(x)), kv


# --- the model ---------------------------------------------------------------------------


class DecoderLM(nnx.Module):
    def __init__(self, config: DecoderLMConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        init = with_axes(nnx.initializers.normal(0.02), ("vocab", "embed"))
        self.embed_tokens = nnx.Param(init(rngs.params(), (c.vocab_size, c.hidden_size)))
        if c.arch == "gpt2":
            pos_init = with_axes(nnx.initializers.normal(0.01), (None, "embed"))
            self.pos_embed = nnx.Param(pos_init(rngs.params(), (c.max_positions, c.hidden_size)))
        self.blocks = nnx.List([DecoderBlock(c, rngs=rngs) for _ in range(c.num_layers)])
        self.ln_final = norm_for(c, rngs)
        if not c.tie_embeddings:
            self.lm_head = nnx.Param(init(rngs.params(), (c.vocab_size, c.hidden_size)))

    # The pieces, for models (Flamingo) that run their own layers in between.
    def token_vectors(self, ids: Array) -> Array:
        return jnp.take(self.embed_tokens[...], ids, axis=0)

    def embed(self, vectors: Array, positions: Array) -> Array:
        """Token vectors [B, L, D] plus learned positions (GPT-2; LLaMA rotates q, k instead)."""
        if self.config.arch == "gpt2":
            vectors = vectors + jnp.take(self.pos_embed[...], positions, axis=0)
        return vectors.astype(jnp.dtype(self.config.dtype))

    def output_embedding(self) -> Array:
        """[V, D]: the rows whose dot product with the final hidden state gives the logits."""
        return self.embed_tokens[...] if self.config.tie_embeddings else self.lm_head[...]

    def head(self, hidden: Array) -> Array:
        """Final norm and vocabulary logits, in float32."""
        return self.vocab_logits(self.ln_final(hidden))

    def vocab_logits(self, normed: Array) -> Array:
        """Logits of final-normed hidden states against the output embedding."""
        return jnp.einsum(
            "bld,vd->blv", normed, self.output_embedding().astype(normed.dtype), preferred_element_type=jnp.float32
        )

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, cache: KVCache | None = None):
        """Logits [B, L, V]; with `cache`, (logits, updated cache)."""
        return run_decoder(self, self.token_vectors(input_ids), attention_mask, cache)


def run_decoder(
    lm: DecoderLM, vectors: Array, attention_mask: Array | None, cache: KVCache | None, between_layers=None, head=None
):
    """The decoder's forward pass from token vectors [B, L, D]. `between_layers(i, hidden)`
    runs before layer i; `head(hidden)` replaces the LM's head (Flamingo adds logits).

    Without a cache the keys are the L new tokens themselves; with one, the new tokens are
    written at slots cache.length.. and attend to everything valid before them.
    """
    b, length = vectors.shape[:2]
    mask = jnp.ones((b, length), bool) if attention_mask is None else attention_mask.astype(bool)
    if cache is None:
        positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
        key_mask, offset = mask, jnp.int32(0)
    else:
        positions = jnp.maximum(cache.positions(mask), 0)
        offset, key_mask = cache.length, cache.written_mask(mask)
    x = lm.embed(vectors, positions)
    c = lm.config

    def layer(block, x):
        return block(x, positions, key_mask, None, offset)[0]

    if cache is None and between_layers is None:  # training and scoring: one stack to scan
        return (head or lm.head)(run_stack(lm.blocks, x, layer, remat=c.remat, scan=c.scan_layers))
    new_keys, new_values = [], []
    for i, block in enumerate(lm.blocks):
        if between_layers is not None:
            x = between_layers(i, x)
        if cache is None:  # Flamingo's forward: its adapters sit between the layers
            x = run_stack([block], x, layer, remat=c.remat)
            continue
        x, (k, v) = block(x, positions, key_mask, (cache.keys[i], cache.values[i]), offset)
        new_keys.append(k)
        new_values.append(v)
    logits = (head or lm.head)(x)
    if cache is None:
        return logits
    return logits, KVCache(tuple(new_keys), tuple(new_values), key_mask, offset + length)


class LanguageModel(nnx.Module):
    """A decoder LM as a recipe's model (LM pretraining): batch -> {'logits': [B, L, V]}."""

    def __init__(self, lm: DecoderLM):
        self.lm = lm

    def __call__(self, batch) -> dict:
        return {"logits": self.lm(batch["text_ids"], batch["text_mask"])}
