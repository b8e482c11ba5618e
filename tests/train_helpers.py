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
