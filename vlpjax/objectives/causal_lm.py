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


def random_prefix_lengths(key: jax.Array, mask: jax.Array) -> jax.Array:
    """[B] prefix lengths, uniform over 1 .. n-1 for a row of n real tokens: at least the start
    token in the prefix and one token to predict (SimVLM's random split)."""
    real = jnp.sum(mask.astype(jnp.int32), axis=1)
    draw = jax.random.uniform(key, real.shape)
    return jnp.where(real > 1, 1 + jnp.floor(draw * (real - 1)).astype(jnp.int32), real)


def prefix_lm_loss(logits: jax.Array, ids: jax.Array, mask: jax.Array, prefix_len: jax.Array, *, axis_name=None):
    """Mean next-token cross-entropy over the suffix's real tokens (positions >= prefix_len)."""
    return causal_lm_loss(logits, ids, mask, prefix_len, axis_name=axis_name, name="prefix_lm")


def causal_lm_loss(
    logits: jax.Array,
    ids: jax.Array,
    mask: jax.Array,
    prefix_len: jax.Array | None = None,
    *,
    ignore_ids: Sequence[int] = (),
    axis_name: AxisName = None,
    name: str = "lm",
):
    """Mean next-token cross-entropy over the counted positions of the global batch: every
    real token after the first, or with `prefix_len` [B] only those at positions >= it (a
    question's answer, a PrefixLM's suffix)."""
    targets, weights = next_token_targets(ids, mask, ignore_ids)
    if prefix_len is not None:
        weights &= jnp.arange(1, ids.shape[1])[None, :] >= prefix_len[:, None]
    loss, accuracy, count = token_cross_entropy(logits[:, :-1], targets, weights, axis_name=axis_name)
    return loss, {f"{name}/accuracy": accuracy, f"{name}/tokens": count}
