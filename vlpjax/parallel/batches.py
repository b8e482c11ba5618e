"""Host-local batches <-> global arrays sharded over the batch axes of the mesh."""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vlpjax.parallel.mesh import BATCH_AXES


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading dimension split over (data, fsdp); every other dimension whole."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def host_local_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Each process passes its own rows; the result is one global array per key.

    The global batch is the concatenation of every process's rows in process order, so a
    process must hold (its number of addressable batch shards / total shards) of the rows.
    """
    out = {}
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    for key, value in batch.items():
        value = np.asarray(value)
        global_rows = value.shape[0] * jax.process_count()
        if global_rows % batch_shards:
            raise ValueError(
                f"batch key {key!r}: global batch of {global_rows} rows does not split over "
                f"{batch_shards} batch shards (data x fsdp)"
            )
        out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim), value)
    return out


def global_to_host_local(array: jax.Array) -> np.ndarray:
    """The rows of a batch-sharded global array that live on this process, in order."""
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    seen, rows = set(), []
    for shard in shards:
        start = shard.index[0].start or 0
        if start not in seen:
            seen.add(start)
            rows.append(np.asarray(shard.data))
    return np.concatenate(rows, axis=0)
