"""Argmax predictions that a broken model cannot turn into hits.

`jnp.argmax` of a row holding a NaN returns the NaN's index (or 0 for an all-NaN row), which
can coincide with the label: a diverged model would keep scoring. A row with any non-finite
logit predicts nothing (-1, never a label).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NO_PREDICTION = -1


def finite_argmax(logits: jax.Array) -> jax.Array:
    """argmax over the last axis, NO_PREDICTION where the row has a non-finite logit."""
    finite = jnp.all(jnp.isfinite(logits), axis=-1)
    return jnp.where(finite, jnp.argmax(logits, axis=-1), NO_PREDICTION)


def hits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """1.0 where the finite argmax equals the label, else 0.0."""
    return (finite_argmax(logits) == labels).astype(jnp.float32)
