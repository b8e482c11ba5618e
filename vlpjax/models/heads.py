"""Output heads: projections into the shared embedding space, and the ITM / MLM / VQA heads."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlpjax.models.layers import activation, dense, layer_norm


class Projection(nnx.Module):
    """A bias-free linear map into the joint embedding space, then L2 normalisation."""

    def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs):
        self.linear = dense(in_dim, out_dim, ("embed", None), use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.linear(x).astype(jnp.float32)
        return y / jnp.linalg.norm(y, axis=-1, keepdims=True).clip(1e-12)


class MatchingHead(nnx.Module):
    """ITM: [CLS] of the fused sequence -> two logits (0 = no match, 1 = match)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.linear = dense(dim, 2, ("embed", None), rngs=rngs)

    def __call__(self, pooled: jax.Array) -> jax.Array:
        return self.linear(pooled).astype(jnp.float32)


class MaskedLMHead(nnx.Module):
    """BERT's prediction head: dense, gelu, LayerNorm, then a projection onto the vocabulary."""

    def __init__(self, dim: int, vocab_size: int, *, act: str = "gelu", dtype=jnp.float32, rngs: nnx.Rngs):
        self.transform = dense(dim, dim, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.act = activation(act)
        self.norm = layer_norm(dim, eps=1e-12, rngs=rngs)
        self.decoder = dense(dim, vocab_size, ("embed", "vocab"), dtype=dtype, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.decoder(self.norm(self.act(self.transform(tokens)))).astype(jnp.float32)


class AnswerHead(nnx.Module):
    """VQA as classification (UNITER / ViLT): a two-layer MLP from [CLS] to answer logits."""

    def __init__(self, dim: int, num_answers: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.hidden = dense(dim, 2 * dim, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.norm = layer_norm(2 * dim, rngs=rngs)
        self.out = dense(2 * dim, num_answers, ("mlp", None), dtype=dtype, rngs=rngs)

    def __call__(self, pooled: jax.Array) -> jax.Array:
        return self.out(self.norm(jax.nn.gelu(self.hidden(pooled)))).astype(jnp.float32)
