"""The sharded contrastive losses equal the single-device loss on the global batch, gradients too."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from tests.tiny_models import random_batch, tiny_dual_encoder
from vlpjax.objectives import contrastive
from vlpjax.parallel import make_mesh, over_batch_axes
from vlpjax.parallel.batches import host_local_to_global

DEVICES = 8
PER_DEVICE = 4
LOSSES = {
    "softmax": ("softmax", {}),
    "sigmoid": ("sigmoid", {"chunked": False}),
    "sigmoid_chunked": ("sigmoid", {"chunked": True}),
}


def _objective(kind, options):
    if kind == "softmax":
        return lambda out, axis_name: contrastive.softmax_loss(
            out["img_emb"], out["txt_emb"], out["logit_scale"], axis_name=axis_name
        )
    return lambda out, axis_name: contrastive.sigmoid_loss(
        out["img_emb"], out["txt_emb"], out["logit_scale"], out["logit_bias"], axis_name=axis_name, **options
    )


def _setup(name):
    kind, options = LOSSES[name]
    model = tiny_dual_encoder(kind, seed=3)
    # Move the temperature off its init so its gradient is not trivially shaped.
    model.logit_scale[...] = jnp.asarray(1.3)
    graphdef, state = nnx.split(model)
    batch = {k: jnp.asarray(v) for k, v in random_batch(11, DEVICES * PER_DEVICE).items()}
    return graphdef, state, batch, _objective(kind, options)


def _single_device(graphdef, state, batch, objective):
    def loss_fn(state):
        return objective(nnx.merge(graphdef, state)(batch), None)[0]

    return jax.jit(jax.value_and_grad(loss_fn))(state)


def _mesh_shard_map(graphdef, state, batch, objective):
    """The mesh path: forward in the global view, the loss under shard_map over the batch axes."""
    mesh = make_mesh(data=DEVICES)
    global_batch = host_local_to_global({k: np.asarray(v) for k, v in batch.items()}, mesh)

    def loss_fn(state, batch):
        out = nnx.merge(graphdef, state)(batch)
        scalars = {k: v for k, v in out.items() if k.startswith("logit")}
        embs = {k: v for k, v in out.items() if k.endswith("emb")}

        def local(embs, scalars, axis_name):
            return objective({**embs, **scalars}, axis_name)

        run = over_batch_axes(lambda e, s, axis_name: local(e, s, axis_name), mesh, num_batched=1)
        return run(embs, scalars)[0]

    return jax.jit(jax.value_and_grad(loss_fn))(state, global_batch)


def _pmap(graphdef, state, batch, objective):
    sharded = jax.tree.map(lambda x: x.reshape(DEVICES, PER_DEVICE, *x.shape[1:]), batch)

    def step(state, batch):
        def loss_fn(state):
            return objective(nnx.merge(graphdef, state)(batch), "batch")[0]

        loss, grads = jax.value_and_grad(loss_fn)(state)
        return loss, lax.pmean(grads, "batch")

    losses, grads = jax.pmap(step, axis_name="batch", in_axes=(None, 0))(state, sharded)
    np.testing.assert_allclose(losses, np.full(DEVICES, losses[0]), rtol=1e-6)  # same loss on every shard
    return losses[0], jax.tree.map(lambda g: g[0], grads)


def _assert_same(got, want):
    (loss, grads), (ref_loss, ref_grads) = got, want
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    got_leaves = jax.tree_util.tree_leaves_with_path(grads)
    want_leaves = jax.tree_util.tree_leaves_with_path(ref_grads)
    assert len(got_leaves) == len(want_leaves) > 10
    # Some gradients are zero in exact arithmetic (e.g. attention key biases), so leave an
    # absolute floor at float32 round-off of the largest gradient.
    floor = 1e-6 * max(float(np.max(np.abs(w))) for _, w in want_leaves)
    for (path, g), (_, w) in zip(got_leaves, want_leaves, strict=False):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=floor, err_msg=jax.tree_util.keystr(path))


@functools.lru_cache(maxsize=None)
def _reference(name):
    graphdef, state, batch, objective = _setup(name)
    return _single_device(graphdef, state, batch, objective)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_sharded_loss_and_grads_match_single_device(name, mode):
    assert jax.device_count() == DEVICES
    graphdef, state, batch, objective = _setup(name)
    run = _mesh_shard_map if mode == "shard_map" else _pmap
    got = run(graphdef, state, batch, objective)
    ref = _reference(name)
    _assert_same(got, ref)
    # The temperature (and bias) receive a real gradient in every mode.
    assert abs(float(ref[1]["logit_scale"][...])) > 1e-6
    if name.startswith("sigmoid"):
        assert abs(float(ref[1]["logit_bias"][...])) > 1e-6
