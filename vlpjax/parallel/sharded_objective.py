"""Run a pure objective over the batch axes of a mesh with `jax.shard_map`."""
from __future__ import annotations

import functools
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from vlpjax.parallel.mesh import BATCH_AXES


def over_batch_axes(objective: Callable, mesh: Mesh, num_batched: int, **kwargs) -> Callable:
    """`objective(*batched, *replicated, axis_name=..., **kwargs)` on global arrays.

    The first `num_batched` positional arguments are split by rows over (data, fsdp); the
    rest (temperatures, keys) are replicated. The (loss, metrics) result is replicated.
    """
    local = functools.partial(objective, axis_name=BATCH_AXES, **kwargs)

    def run(*args):
        specs = tuple(P(BATCH_AXES) if i < num_batched else P() for i in range(len(args)))
        return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P())(*args)

    return run


def _batch_specs(tree, batch_size: int):
    """Arrays whose leading dimension is the global batch are split over the batch axes."""
    return jax.tree.map(lambda x: P(BATCH_AXES) if np.ndim(x) >= 1 and x.shape[0] == batch_size else P(), tree)


def objective_on_mesh(objective: Callable, mesh: Mesh, outputs, batch):
    """`objective(outputs, batch, axis_name)` on global pytrees: batch-sized arrays split over
    (data, fsdp), everything else replicated; the (loss, metrics) result is replicated."""
    batch_size = jax.tree.leaves(batch)[0].shape[0]
    specs = (_batch_specs(outputs, batch_size), _batch_specs(batch, batch_size))
    run = jax.shard_map(lambda o, b: objective(o, b, BATCH_AXES), mesh=mesh, in_specs=specs, out_specs=P())
    return run(outputs, batch)
