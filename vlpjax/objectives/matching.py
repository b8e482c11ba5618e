"""Image-text matching with hard negatives mined over the all-gathered global batch (ALBEF).

For every local image we sample one negative text, and for every local text one negative
image, with probability softmax(ITC similarity) over all columns of the global batch. The
positive, and any column showing the same image (same `image_id`), is masked out before the
softmax. Row r of the global batch samples with `fold_in(key, r)`, so a sharded batch draws
exactly what one device would. The negatives' features are gathered with their gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vlpjax.objectives.accuracy import hits
from vlpjax.objectives.shards import AxisName, gather_rows, global_mean, global_row_keys

_IMAGE_TO_TEXT, _TEXT_TO_IMAGE = 0, 1


def _sample_rows(key: jax.Array, logits: jax.Array, axis_name: AxisName) -> jax.Array:
    """One categorical draw per row; row keys depend on the global row index only."""
    keys = global_row_keys(key, logits.shape[0], axis_name)
    return jax.vmap(jax.random.categorical)(keys, logits)


def hard_negatives(
    key: jax.Array, sim_i2t: jax.Array, sim_t2i: jax.Array, image_ids: jax.Array, *, axis_name: AxisName = None
):
    """Global column indices of (a negative text per local image, a negative image per local text).

    sim_i2t [b, N]: local images against all texts; sim_t2i [b, N]: local texts against all
    images; image_ids [b]. The global batch must show at least two distinct images.
    """
    all_ids = gather_rows(image_ids, axis_name)
    same_image = image_ids[:, None] == all_ids[None, :]  # includes each row's own positive
    blocked = jnp.finfo(jnp.float32).min

    def masked(sim):
        return jnp.where(same_image, blocked, jax.lax.stop_gradient(sim).astype(jnp.float32))

    neg_text = _sample_rows(jax.random.fold_in(key, _IMAGE_TO_TEXT), masked(sim_i2t), axis_name)
    neg_image = _sample_rows(jax.random.fold_in(key, _TEXT_TO_IMAGE), masked(sim_t2i), axis_name)
    return neg_text, neg_image


def take_global_rows(x: jax.Array, indices: jax.Array, axis_name: AxisName) -> jax.Array:
    """Rows `indices` of the global batch of `x`; gradients flow back to the owning shard."""
    return jnp.take(gather_rows(x, axis_name), indices, axis=0)


def mine_hard_negatives(img_emb, txt_emb, image_ids, image, text, logit_scale, key, *, axis_name: AxisName = None):
    """(a hard-negative image for each local text, a hard-negative text for each local image).

    img_emb / txt_emb [b, E] are the ITC embeddings that score candidates; `image` and `text`
    are pytrees of per-row arrays (the fusion inputs: tokens and masks) gathered with gradient.
    """
    sim_i2t = logit_scale * img_emb @ gather_rows(txt_emb, axis_name).T
    sim_t2i = logit_scale * txt_emb @ gather_rows(img_emb, axis_name).T
    neg_text, neg_image = hard_negatives(key, sim_i2t, sim_t2i, image_ids, axis_name=axis_name)

    def rows_of(tree, indices):
        return jax.tree.map(lambda x: take_global_rows(x, indices, axis_name), tree)

    return rows_of(image, neg_image), rows_of(text, neg_text)


def itm_loss(
    pos_logits: jax.Array, neg_image_logits: jax.Array, neg_text_logits: jax.Array, *, axis_name: AxisName = None
):
    """Binary matching cross-entropy over the 3b scored pairs (class 1 = match), global mean."""
    logits = jnp.concatenate([pos_logits, neg_image_logits, neg_text_logits]).astype(jnp.float32)
    b = pos_logits.shape[0]
    labels = jnp.concatenate([jnp.ones(b, jnp.int32), jnp.zeros(2 * b, jnp.int32)])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    local = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))
    accuracy = jnp.mean(hits(logits, labels))
    loss = global_mean(local, axis_name)
    return loss, {"itm/loss": loss, "itm/accuracy": global_mean(accuracy, axis_name)}
