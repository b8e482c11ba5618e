"""Non-maximum suppression with a fixed-size output, so it runs under jit.

Boxes are visited best score first (equal scores: lower index first); a box is kept unless a
kept box overlaps it with IoU above the threshold. The first `max_out` kept boxes are returned
as indices into the input, padded with -1, with a mask of the real ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlpjax.models.detection.anchors import box_iou


def nms(boxes: jax.Array, scores: jax.Array, iou_threshold: float, max_out: int) -> tuple[jax.Array, jax.Array]:
    """boxes [N, 4], scores [N] -> (indices [max_out] int32, -1 where none; valid [max_out])."""
    n = boxes.shape[0]
    order = jnp.argsort(-scores, stable=True)
    overlaps = box_iou(boxes[order], boxes[order]) > iou_threshold

    def visit(i, state):
        keep, suppressed = state
        kept = ~suppressed[i]
        return keep.at[i].set(kept), suppressed | (kept & overlaps[i])

    keep, _ = jax.lax.fori_loop(0, n, visit, (jnp.zeros(n, bool), jnp.zeros(n, bool)))
    # The kept boxes' sorted positions first, in order; the rest after them.
    rank = jnp.where(keep, jnp.arange(n), n + jnp.arange(n))
    picked = jnp.argsort(rank)[:max_out] if n >= max_out else jnp.argsort(rank)
    valid = keep[picked]
    indices = jnp.where(valid, order[picked], -1).astype(jnp.int32)
    if n < max_out:
        pad = max_out - n
        indices = jnp.concatenate([indices, jnp.full((pad,), -1, jnp.int32)])
        valid = jnp.concatenate([valid, jnp.zeros((pad,), bool)])
    return indices, valid
