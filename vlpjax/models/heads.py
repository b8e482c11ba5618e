"""Output heads: projections into the shared embedding space."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlpjax.models.layers import dense


class Projection(nnx.Module):
    """A bias-free linear map into the joint embedding space, then L2 normalisation."""

    def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs):
        self.linear = dense(in_dim, out_dim, ("embed", None), use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.linear(x).astype(jnp.float32)
        return y / jnp.linalg.norm(y, axis=-1, keepdims=True).clip(1e-12)
