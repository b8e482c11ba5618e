"""The T5 encoder (Raffel et al. 2020): the seq2seq text tower of SimVLM, BLIP-2 FlanT5 and PaLI.

What sets it apart from BERT, each laid out as Hugging Face's T5EncoderModel so its weights map
one to one (`vlpjax.interop.hf_t5`):

- positions are a learned scalar bias per head on the attention logits, looked up by the
  bucket of the key's offset from the query (`relative_position_buckets`): exact for small
  offsets, logarithmic up to `max_distance`, one bucket set per direction. Only the first
  layer holds the table; every layer adds the same bias;
- RMS LayerNorm: scaled by the root mean square, no mean subtracted, no bias;
- no biases anywhere, and no 1/sqrt(d) on the attention logits (T5 folds it into the query's
  initial scale, as here);
- the MLP is ReLU (v1.0) or gated-GELU, act(x W0) * (x W1) (v1.1, FLAN-T5).

As a dual encoder's text tower (`text.kind='t5'`) the text embedding is the mean of the real
tokens' features (Sentence-T5's pooling): T5 has no [CLS].
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlpjax.models.layers import Encoded, activation, dense, masked_mean, with_axes
from vlpjax.models.lm import RMSNorm  # LLaMA's and T5's norm: no mean, no bias
from vlpjax.models.stack import run_stack
from vlpjax.models.text import token_embedding

Array = jax.Array
# feed_forward_proj -> (gated, activation): Hugging Face's names.
FEED_FORWARD = {"relu": (False, "relu"), "gated-gelu": (True, "gelu_new"), "gated-silu": (True, "silu")}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Field names follow Hugging Face's T5Config."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    dtype: str = "float32"
    attention: str = "xla"  # the scale switches (README); the position bias needs XLA's kernel
    remat: str = "none"
    scan_layers: bool = False

    def __post_init__(self):
        if self.attention != "xla":
            raise ValueError(
                f"the T5 encoder adds a position bias to every logit: attention='xla', not {self.attention!r}"
            )
        if self.feed_forward_proj not in FEED_FORWARD:
            raise ValueError(
                f"T5 feed_forward_proj must be one of {sorted(FEED_FORWARD)}, got {self.feed_forward_proj!r}"
            )


def relative_position_buckets(query_len: int, key_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """[query_len, key_len] bucket of each key's offset from its query, bidirectional: half the
    buckets for keys after the query; in each half, offsets below half its buckets are exact and
    the rest share logarithmically wider buckets up to `max_distance` (then the last one)."""
    offset = np.arange(key_len)[None, :] - np.arange(query_len)[:, None]
    half = num_buckets // 2
    buckets = np.where(offset > 0, half, 0)
    distance = np.abs(offset)
    exact = half // 2
    # The log of 0 below is never selected (small offsets are exact): silence its warning.
    with np.errstate(divide="ignore"):
        log_scaled = exact + (np.log(distance / exact) / math.log(max_distance / exact) * (half - exact))
    far = np.minimum(np.floor(np.nan_to_num(log_scaled, neginf=0)).astype(np.int64), half - 1)
    return buckets + np.where(distance < exact, distance, far)


def _normal(std: float):
    """Hugging Face T5's initialisers (factor 1): each a normal of the std the layer's fan gives."""
    return nnx.initializers.normal(std)


class T5Attention(nnx.Module):
    def __init__(self, c: T5Config, *, dtype, rngs: nnx.Rngs):
        inner, common = c.num_heads * c.d_kv, dict(use_bias=False, dtype=dtype, rngs=rngs)
        self.num_heads = c.num_heads
        # T5's init: the query's scale carries the 1/sqrt(d_kv) the logits go without.
        self.q = dense(c.d_model, inner, ("embed", "heads"), init=_normal((c.d_model * c.d_kv) ** -0.5), **common)
        self.k = dense(c.d_model, inner, ("embed", "heads"), init=_normal(c.d_model**-0.5), **common)
        self.v = dense(c.d_model, inner, ("embed", "heads"), init=_normal(c.d_model**-0.5), **common)
        self.o = dense(inner, c.d_model, ("heads", "embed"), init=_normal(inner**-0.5), **common)

    def __call__(self, x: Array, bias: Array, mask: Array) -> Array:
        """bias [1, H, L, L] position bias; mask [B, 1, 1, L] real keys."""
        heads = lambda y: y.reshape(*y.shape[:-1], self.num_heads, -1)  # noqa: E731
        out = jax.nn.dot_product_attention(
            heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), bias=bias.astype(x.dtype), mask=mask, scale=1.0
        )
        return self.o(out.reshape(*x.shape[:-1], -1))


class T5FeedForward(nnx.Module):
    def __init__(self, c: T5Config, *, dtype, rngs: nnx.Rngs):
        self.gated, self.act_name = FEED_FORWARD[c.feed_forward_proj]
        common = dict(use_bias=False, dtype=dtype, rngs=rngs)
        wide = dict(init=_normal(c.d_model**-0.5), **common)
        self.wi = dense(c.d_model, c.d_ff, ("embed", "mlp"), **wide)
        self.wi_linear = dense(c.d_model, c.d_ff, ("embed", "mlp"), **wide) if self.gated else None
        self.wo = dense(c.d_ff, c.d_model, ("mlp", "embed"), init=_normal(c.d_ff**-0.5), **common)

    def __call__(self, x: Array) -> Array:
        hidden = activation(self.act_name)(self.wi(x))
        if self.gated:
            hidden = hidden * self.wi_linear(x)
        return self.wo(hidden)


class T5Block(nnx.Module):
    def __init__(self, c: T5Config, *, dtype, rngs: nnx.Rngs):
        self.ln_attn = RMSNorm(c.d_model, eps=c.layer_norm_epsilon, rngs=rngs)
        self.attn = T5Attention(c, dtype=dtype, rngs=rngs)
        self.ln_mlp = RMSNorm(c.d_model, eps=c.layer_norm_epsilon, rngs=rngs)
        self.mlp = T5FeedForward(c, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, bias: Array, mask: Array) -> Array:
        x = x + self.attn(self.ln_attn(x), bias, mask)
        return x + self.mlp(self.ln_mlp(x))


class T5Encoder(nnx.Module):
    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        c = self.config = config
        dtype = jnp.dtype(c.dtype)
        self.out_dim = c.d_model
        self.embed = token_embedding(c.vocab_size, c.d_model, rngs)
        init = with_axes(_normal(c.d_model**-0.5), (None, "heads"))
        self.position_bias = nnx.Param(init(rngs.params(), (c.relative_attention_num_buckets, c.num_heads)))
        self.blocks = nnx.List([T5Block(c, dtype=dtype, rngs=rngs) for _ in range(c.num_layers)])
        self.ln_final = RMSNorm(c.d_model, eps=c.layer_norm_epsilon, rngs=rngs)

    def bias(self, length: int) -> Array:
        """[1, H, L, L]: each head's learned bias for each query-key offset bucket."""
        c = self.config
        buckets = relative_position_buckets(
            length, length, c.relative_attention_num_buckets, c.relative_attention_max_distance
        )
        return jnp.take(self.position_bias[...], jnp.asarray(buckets), axis=0).transpose(2, 0, 1)[None]

    def __call__(self, input_ids: Array, attention_mask: Array | None = None) -> Array:
        """Hugging Face's T5EncoderModel: the last hidden state [B, L, d_model]."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        x = self.embed(input_ids).astype(jnp.dtype(self.config.dtype))
        bias, mask = self.bias(input_ids.shape[1]), attention_mask.astype(bool)[:, None, None, :]
        c = self.config
        x = run_stack(self.blocks, x, lambda block, x: block(x, bias, mask), remat=c.remat, scan=c.scan_layers)
        return self.ln_final(x)

    def encode(self, text_ids: Array, text_mask: Array) -> Encoded:
        mask = text_mask.astype(bool)
        tokens = self(text_ids, mask)
        return Encoded(tokens=tokens, pooled=masked_mean(tokens, mask), mask=mask)
