"""Run a pure objective over the batch axes of a mesh with `jax.shard_map`."""
from __future__ import annotations

import functools
from typing import Callable

import jax
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
