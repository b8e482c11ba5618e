"""Masked language modelling: BERT's 15% selection with the 80/10/10 replacement rule.

Masking is a pure function of an explicit key. Each row draws from `fold_in(key, global row)`,
so a sharded batch is masked exactly as the same rows would be on one device.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vlpjax.objectives.shards import AxisName, global_row_keys
from vlpjax.objectives.token_loss import token_cross_entropy

MASK_PROB = 0.15
REPLACE_WITH_MASK = 0.8
REPLACE_WITH_RANDOM = 0.1  # the remaining 10% keep their token


def replaceable_ids(vocab_size: int, special_ids: Sequence[int]) -> np.ndarray:
    """Token ids a random replacement may take: every id that is not special."""
    return np.setdiff1d(np.arange(vocab_size), np.asarray(list(special_ids), dtype=np.int64)).astype(np.int32)


def _mask_row(key, ids, candidates, mask_id: int, replacements: jax.Array, prob: float):
    select_key, kind_key, token_key = jax.random.split(key, 3)
    selected = jax.random.bernoulli(select_key, prob, ids.shape) & candidates
    kind = jax.random.uniform(kind_key, ids.shape)
    random_tokens = replacements[jax.random.randint(token_key, ids.shape, 0, replacements.shape[0])]
    replaced = jnp.where(
        kind < REPLACE_WITH_MASK, mask_id, jnp.where(kind < REPLACE_WITH_MASK + REPLACE_WITH_RANDOM, random_tokens, ids)
    )
    return jnp.where(selected, replaced, ids), selected


def mask_tokens(
    key: jax.Array,
    ids: jax.Array,
    text_mask: jax.Array,
    *,
    mask_id: int,
    special_ids: Sequence[int],
    vocab_size: int,
    prob: float = MASK_PROB,
    axis_name: AxisName = None,
):
    """-> (masked ids [B,L], targets [B,L] (the original ids), selected [B,L] bool).

    Only real, non-special tokens are candidates; the loss counts selected positions only.
    """
    candidates = text_mask.astype(bool) & ~jnp.isin(ids, jnp.asarray(list(special_ids), ids.dtype))
    replacements = jnp.asarray(replaceable_ids(vocab_size, special_ids))
    keys = global_row_keys(key, ids.shape[0], axis_name)
    masked, selected = jax.vmap(lambda k, i, c: _mask_row(k, i, c, mask_id, replacements, prob))(keys, ids, candidates)
    return masked.astype(ids.dtype), ids, selected


def mlm_loss(logits: jax.Array, targets: jax.Array, selected: jax.Array, *, axis_name: AxisName = None):
    """Cross-entropy averaged over the selected positions of the global batch."""
    loss, accuracy, count = token_cross_entropy(logits, targets, selected, axis_name=axis_name)
    return loss, {"mlm/loss": loss, "mlm/accuracy": accuracy, "mlm/masked_tokens": count}
