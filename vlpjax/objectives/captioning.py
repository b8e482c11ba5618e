"""Causal language modelling: next-token cross-entropy over the real tokens of the global batch.

Used to pretrain decoder LMs and to train Flamingo; captioning is the same loss on
`<image>caption<|endofchunk|>` text. Padding and the ids in `ignore_ids` (Flamingo's `<image>`,
which the data gives and the model never has to predict) carry no loss.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

AxisName = str | tuple[str, ...] | None


def next_token_targets(ids: jax.Array, mask: jax.Array, ignore_ids: Sequence[int] = ()):
    """(targets [B, L-1], weights [B, L-1]): position t predicts token t + 1."""
    targets = ids[:, 1:]
    weights = mask[:, 1:].astype(bool) & mask[:, :-1].astype(bool)
    if ignore_ids:
        weights &= ~jnp.isin(targets, jnp.asarray(list(ignore_ids), targets.dtype))
    return targets, weights


def causal_lm_loss(
    logits: jax.Array, ids: jax.Array, mask: jax.Array, *, ignore_ids: Sequence[int] = (), axis_name: AxisName = None
):
    """Mean next-token cross-entropy over the counted positions of the global batch."""
    targets, weights = next_token_targets(ids, mask, ignore_ids)
    log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    w = weights.astype(jnp.float32)
    total, count = jnp.sum(nll * w), jnp.sum(w)
    correct = jnp.sum((jnp.argmax(logits[:, :-1], -1) == targets) * w)
    if axis_name is not None:
        total, count, correct = (jax.lax.psum(x, axis_name) for x in (total, count, correct))
    loss = total / jnp.maximum(count, 1.0)
    return loss, {"lm/accuracy": correct / jnp.maximum(count, 1.0), "lm/tokens": count}
