"""Helpers for tests that step a recipe through the trainer or compare gradient trees."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from vlpjax.config import load_config
from vlpjax.train.loop import _close, open_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recipe_losses(recipe: str, overrides, workdir: str, steps: int) -> np.ndarray:
    """The loss of each of `steps` trainer steps of `configs/<recipe>.py:tiny`, no eval or save."""
    config = load_config(os.path.join(ROOT, "configs", f"{recipe}.py:tiny"), list(overrides))
    r = open_run(config, workdir)
    try:
        losses = []
        for _ in range(steps):
            r.state, metrics = r.stepper(r.state, r.stepper.batch(next(r.iterator)))
            losses.append(float(np.asarray(metrics["loss"])))
    finally:
        _close(r)
    return np.asarray(losses)


def assert_trees_close(actual, expected, rtol: float = 1e-5) -> None:
    """Leaf by leaf within rtol, with an absolute floor of rtol x the largest value of the tree."""
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(expected))
    assert scale > 0
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale, err_msg=jax.tree_util.keystr(path))


def objective_on_one_and_eight_devices(model, batch, spec: dict, vocab=None) -> tuple[dict, dict]:
    """The objective `spec` on one device and with the batch split over an 8-device mesh, the
    same step key: asserts the gradients agree (rtol 1e-4, floor 1e-6 x the largest) and
    returns both metrics dicts for the caller to compare."""
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from vlpjax.objectives.registry import StepContext, make_objective
    from vlpjax.parallel import BATCH_AXES, AxisShards, MeshShards, make_mesh

    graphdef, params = nnx.split(model)
    objective = make_objective(spec, vocab)

    def loss_and_grads(params, batch, shards):
        def loss_fn(params):
            m = nnx.merge(graphdef, params)
            return objective(m(batch), batch, StepContext(model=m, key=jax.random.key(7), shards=shards))

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (_, one), g1 = jax.jit(lambda p, b: loss_and_grads(p, b, AxisShards(None)))(params, batch)
    mesh = make_mesh(data=8)
    sharded = jax.device_put(batch, NamedSharding(mesh, P(BATCH_AXES)))
    (_, eight), g8 = jax.jit(lambda p, b: loss_and_grads(p, b, MeshShards(mesh)))(params, sharded)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g1))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6 * scale)
    return one, eight
