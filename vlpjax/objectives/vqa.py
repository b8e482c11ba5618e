"""VQA as classification over an answer vocabulary, scored as in the VQA benchmark.

The targets are each vocabulary answer's benchmark score for the question (see
`vlpjax.data.answers`). Training uses them as soft targets of a per-answer sigmoid (binary
cross-entropy summed over answers, as UNITER and ViLT do).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlpjax.objectives.accuracy import finite_argmax
from vlpjax.objectives.shards import AxisName, global_mean


def vqa_loss(logits: jax.Array, scores: jax.Array, *, axis_name: AxisName = None):
    """Sigmoid cross-entropy against soft scores, summed over answers, averaged over questions."""
    logits, scores = logits.astype(jnp.float32), scores.astype(jnp.float32)
    per_answer = jnp.maximum(logits, 0) - logits * scores + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    loss = global_mean(jnp.mean(jnp.sum(per_answer, axis=-1)), axis_name)
    predicted = finite_argmax(logits)  # a non-finite row predicts nothing and scores 0
    credit = jnp.take_along_axis(scores, jnp.maximum(predicted, 0)[:, None], axis=-1)[:, 0]
    accuracy = global_mean(jnp.mean(jnp.where(predicted >= 0, credit, 0.0)), axis_name)
    return loss, {"vqa/loss": loss, "vqa/train_accuracy": accuracy}
