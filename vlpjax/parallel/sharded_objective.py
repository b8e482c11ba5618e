"""Run pure per-shard objectives over the batch axes: under `jax.shard_map` on a mesh, or
directly with an axis name where the caller already holds one shard (pmap)."""

from __future__ import annotations

import functools
from typing import Callable

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from vlpjax.parallel.mesh import BATCH_AXES


class MeshShards:
    """Runs a per-shard function over the batch axes of a mesh (the mesh-jit step).

    `shards(fn, rows=(...), shared=(...))` calls `fn(*rows, *shared, axis_name=...)` under
    shard_map: every leaf in `rows` is split by its leading (batch) axis, `shared` leaves
    are replicated. The result is replicated, or split by rows with `per_row=True`.
    """

    def __init__(self, mesh: Mesh):
        self.mesh = mesh

    def __call__(self, fn: Callable, *, rows=(), shared=(), per_row: bool = False):
        in_specs = tuple(P(BATCH_AXES) for _ in rows) + tuple(P() for _ in shared)
        local = functools.partial(fn, axis_name=BATCH_AXES)
        return jax.shard_map(local, mesh=self.mesh, in_specs=in_specs, out_specs=P(BATCH_AXES) if per_row else P())(
            *rows, *shared
        )


class AxisShards:
    """The same interface where the caller already holds one shard per device (pmap), or
    `axis_name=None` for one device holding the whole batch."""

    def __init__(self, axis_name):
        self.axis_name = axis_name

    def __call__(self, fn: Callable, *, rows=(), shared=(), per_row: bool = False):
        return fn(*rows, *shared, axis_name=self.axis_name)


def over_batch_axes(objective: Callable, mesh: Mesh, num_batched: int, **kwargs) -> Callable:
    """`objective(*batched, *replicated, axis_name=..., **kwargs)` as a function of global
    arrays: the first `num_batched` arguments are split by rows, the rest replicated."""
    shards = MeshShards(mesh)
    fn = functools.partial(objective, **kwargs)
    return lambda *args: shards(fn, rows=args[:num_batched], shared=args[num_batched:])
