"""Output heads: projections into the shared embedding space, and the ITM / MLM / VQA heads."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlpjax.models.layers import activation, dense, layer_norm

# linear: a bias-free matrix (CLIP); linear_bias: with a bias (SigLIP's text head); none: the
# tower's pooled feature is the embedding (SigLIP's image tower, whose MAP head is the last layer).
PROJECTIONS = ("linear", "linear_bias", "none")


class Projection(nnx.Module):
    """A map into the joint embedding space (one of PROJECTIONS), then L2 normalisation."""

    def __init__(self, in_dim: int, out_dim: int, *, kind: str = "linear", rngs: nnx.Rngs):
        if kind not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {kind!r}")
        if kind == "none" and in_dim != out_dim:
            raise ValueError(f"projection 'none' needs the tower width {in_dim} to equal embed_dim {out_dim}")
        self.kind = kind
        use_bias = kind == "linear_bias"
        self.linear = None if kind == "none" else dense(in_dim, out_dim, ("embed", None), use_bias=use_bias, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = (x if self.linear is None else self.linear(x)).astype(jnp.float32)
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
