"""Cross-entropy over the counted token positions of the global batch (MLM and causal LM)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlpjax.objectives.accuracy import hits
from vlpjax.objectives.shards import AxisName, global_sum


def token_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array, *, axis_name: AxisName = None):
    """(loss, accuracy, count): cross-entropy and accuracy averaged over the positions that
    `weights` counts on every shard; count is the global number of counted positions."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    w = weights.astype(jnp.float32)
    total, count = jnp.sum(nll * w), jnp.sum(w)
    correct = jnp.sum(hits(logits, targets) * w)
    total, count, correct = (global_sum(x, axis_name) for x in (total, count, correct))
    count_or_one = jnp.maximum(count, 1.0)
    return total / count_or_one, correct / count_or_one, count
