"""Gradient accumulation (`train.grad_accum = k`): one optimizer step over k micro-batches.

Micro-batch j holds rows j, j + k, j + 2k, ... of the batch, so every device keeps rows of every
micro-batch and nothing moves between devices to form them. The micro-batches run one after
the other under `lax.scan`, so activation memory is that of one micro-batch.

Two semantics:

- **Exact, for objectives of embeddings only** (ITC, softmax or sigmoid): the GradCache scheme.
  1. Embed every micro-batch, keeping no activations.
  2. Take the loss and its gradient with respect to the embeddings over the whole batch,
     with in-batch negatives all-gathered as without accumulation.
  3. Backpropagate those gradients through the towers micro-batch by micro-batch.
  The gradient is the full-batch gradient; the cost is one extra forward pass.
- **Micro-batch averaging, for everything else** (ITM, MLM, VQA, LM, and any set that mixes
  them with ITC): each micro-batch's loss is taken on its own, as a step of batch_size / k
  would take it, and the gradients are averaged. ITM mines its hard negatives, and ITC finds
  its negatives, within the micro-batch (across all devices). Where the loss is a mean over
  rows (VQA; LM on rows of equal length) this equals the full-batch gradient.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# The model outputs an embedding objective reads; the rest (token features) is not cached.
EMBEDDING_OUTPUTS = ("img_emb", "txt_emb", "logit_scale", "logit_bias")


def micro_batches(batch, k: int):
    """[B, ...] leaves -> [k, B/k, ...]: micro-batch j is rows j, j + k, j + 2k, ..."""

    def split(x):
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def merge_micro_batches(stacked):
    """The inverse of `micro_batches`: [k, B/k, ...] -> [B, ...] in the batch's row order."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), stacked)


def _zeros_like(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def averaged_gradients(loss_fn: Callable, params, batch, key, k: int):
    """loss_fn(params, micro_batch, key) -> (loss, metrics): the mean of the k micro-batch
    gradients, and each metric's mean over the micro-batches."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def one(total, inputs):
        j, micro = inputs
        (_, metrics), grads = grad_fn(params, micro, jax.random.fold_in(key, j))
        return _add(total, grads), metrics

    total, metrics = jax.lax.scan(one, _zeros_like(params), (jnp.arange(k), micro_batches(batch, k)))
    grads = jax.tree.map(lambda g: g / k, total)
    return jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics), grads


def _is_shared(x) -> bool:
    """A scalar output (logit scale, bias) is shared by every row; the rest is per row."""
    return jnp.ndim(x) == 0


def exact_embedding_gradients(forward: Callable, loss_on_outputs: Callable, params, batch, k: int):
    """GradCache. forward(params, micro_batch) -> outputs (per-row embeddings and shared
    scalars); loss_on_outputs(outputs, batch) -> (loss, metrics) over the whole batch.
    Returns (metrics, gradient), both those of the full batch."""
    micro = micro_batches(batch, k)

    def embed(_, one_micro):
        return None, jax.lax.stop_gradient(forward(params, one_micro))

    _, stacked = jax.lax.scan(embed, None, micro)  # shared scalars come back as [k] copies
    outputs = {
        name: value[0] if _is_shared(value[0]) else merge_micro_batches(value) for name, value in stacked.items()
    }
    (_, metrics), output_grads = jax.value_and_grad(loss_on_outputs, has_aux=True)(outputs, batch)
    # Back to micro-batches; a shared output gets 1/k of its gradient in each of the k passes.
    micro_grads = {
        name: jnp.broadcast_to(g / k, (k,)) if _is_shared(g) else micro_batches(g, k)
        for name, g in output_grads.items()
    }

    def backward(total, inputs):
        one_micro, cotangent = inputs
        _, pullback = jax.vjp(lambda p: forward(p, one_micro), params)
        return _add(total, pullback(cotangent)[0]), None

    grads, _ = jax.lax.scan(backward, _zeros_like(params), (micro, micro_grads))
    return metrics, grads
