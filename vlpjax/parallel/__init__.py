"""Meshes, partition rules and global arrays: where devices enter vlpjax, and only here."""

from vlpjax.parallel.batches import batch_sharding, global_to_host_local, host_local_to_global
from vlpjax.parallel.mesh import BATCH_AXES, MESH_AXES, make_mesh
from vlpjax.parallel.partitioning import (
    DEFAULT_RULES,
    logical_to_spec,
    shard_model,
    shard_state,
    state_shardings,
    state_specs,
)
from vlpjax.parallel.sharded_objective import AxisShards, MeshShards, over_batch_axes

__all__ = [
    "AxisShards",
    "BATCH_AXES",
    "DEFAULT_RULES",
    "MESH_AXES",
    "MeshShards",
    "batch_sharding",
    "global_to_host_local",
    "host_local_to_global",
    "logical_to_spec",
    "make_mesh",
    "over_batch_axes",
    "shard_model",
    "shard_state",
    "state_shardings",
    "state_specs",
]
