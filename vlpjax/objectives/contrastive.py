"""Image-text contrastive losses over in-batch negatives gathered from every device.

Each loss is a pure function of this device's shard of embeddings and an axis name. With
`axis_name=None` it is the plain single-device loss; under `jax.shard_map` or `jax.pmap` the
same code sees the global batch of negatives. Every shard returns the same global-mean loss.

Gradient convention: under shard_map, differentiate the returned loss directly (replicated
parameters receive the summed gradient automatically). Under pmap, average the per-device
gradients with `lax.pmean` -- the standard data-parallel step.

Embeddings are expected L2-normalised; `logit_scale` is the multiplier itself (exp of the
learned log-temperature), `logit_bias` the additive SigLIP bias.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from vlpjax.objectives.accuracy import hits
from vlpjax.objectives.shards import AxisName, axis_size, gather_rows, global_mean, global_rows


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(hits(logits, labels))


def softmax_loss(img_emb, txt_emb, logit_scale, *, axis_name: AxisName = None):
    """CLIP's symmetric InfoNCE: local rows against all-gathered columns.

    Row i of shard s is global example s*b + i, so that is its label among the gathered columns.
    """
    img_emb, txt_emb = img_emb.astype(jnp.float32), txt_emb.astype(jnp.float32)
    b = img_emb.shape[0]
    labels = global_rows(b, axis_name)
    logits_i2t = logit_scale * img_emb @ gather_rows(txt_emb, axis_name).T
    logits_t2i = logit_scale * txt_emb @ gather_rows(img_emb, axis_name).T
    local = 0.5 * (jnp.mean(_cross_entropy(logits_i2t, labels)) + jnp.mean(_cross_entropy(logits_t2i, labels)))
    metrics = {
        "itc/i2t_acc": global_mean(_accuracy(logits_i2t, labels), axis_name),
        "itc/t2i_acc": global_mean(_accuracy(logits_t2i, labels), axis_name),
    }
    loss = global_mean(local, axis_name)
    return loss, {"itc/loss": loss, **metrics}


def _sigmoid_block(img_emb, txt_emb, logit_scale, logit_bias, positive_diagonal: bool) -> jax.Array:
    """Sum over one [b, b] block of -log sigmoid(z_ij * (t x_i.y_j + b)), z = +1 on positives."""
    logits = logit_scale * img_emb @ txt_emb.T + logit_bias
    signs = -jnp.ones_like(logits)
    if positive_diagonal:
        signs = signs + 2 * jnp.eye(logits.shape[0], dtype=logits.dtype)
    return -jnp.sum(jax.nn.log_sigmoid(signs * logits))


def sigmoid_loss(img_emb, txt_emb, logit_scale, logit_bias, *, axis_name: AxisName = None, chunked: bool = False):
    """SigLIP: every (image, text) pair is an independent binary problem; normalised per image.

    `chunked=False` all-gathers the texts and scores a [b, N] block. `chunked=True` keeps one
    [b, b] block live: texts travel round the ring with `lax.ppermute`, one hop per step, so
    memory per device does not grow with the number of devices.
    """
    img_emb, txt_emb = img_emb.astype(jnp.float32), txt_emb.astype(jnp.float32)
    b = img_emb.shape[0]
    if not chunked or axis_name is None:
        all_txt = gather_rows(txt_emb, axis_name)
        logits = logit_scale * img_emb @ all_txt.T + logit_bias
        labels = global_rows(b, axis_name)
        signs = 2 * jax.nn.one_hot(labels, all_txt.shape[0], dtype=logits.dtype) - 1
        local = -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / b
    else:
        local = _ring_sigmoid_sum(img_emb, txt_emb, logit_scale, logit_bias, axis_name) / b
    loss = global_mean(local, axis_name)
    return loss, {"itc/loss": loss}


def _ring_sigmoid_sum(img_emb, txt_emb, logit_scale, logit_bias, axis_name: AxisName) -> jax.Array:
    n = axis_size(axis_name)
    ring = [(i, (i + 1) % n) for i in range(n)]
    block = jax.checkpoint(_sigmoid_block, static_argnums=(4,))
    total = block(img_emb, txt_emb, logit_scale, logit_bias, True)

    def hop(carry, _):
        txt, acc = carry
        txt = lax.ppermute(txt, axis_name, ring)
        return (txt, acc + block(img_emb, txt, logit_scale, logit_bias, False)), None

    (_, total), _ = lax.scan(hop, (txt_emb, total), None, length=n - 1)
    return total
