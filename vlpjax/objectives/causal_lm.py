"""Causal language modelling: next-token cross-entropy over the real tokens of the global batch.

Used to pretrain decoder LMs and to train Flamingo; captioning is the same loss on
`<image>caption<|endofchunk|>` text. Padding and the ids in `ignore_ids` (Flamingo's `<image>`,
which the data gives and the model never has to predict) carry no loss.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from vlpjax.objectives.shards import AxisName
from vlpjax.objectives.token_loss import token_cross_entropy


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
    loss, accuracy, count = token_cross_entropy(logits[:, :-1], targets, weights, axis_name=axis_name)
    return loss, {"lm/accuracy": accuracy, "lm/tokens": count}
