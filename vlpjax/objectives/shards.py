"""What a per-shard objective may know of the other shards, through one axis name.

With `axis_name=None` each helper is its single-device identity, so an objective written with
them is the plain loss on one device and the global-batch loss under `jax.shard_map` or
`jax.pmap`. Row r of shard s is global row s * b + r.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

AxisName = str | tuple[str, ...] | None


def axis_size(axis_name: AxisName) -> int:
    """Number of shards along `axis_name` (1 on a single device), as a Python int."""
    return 1 if axis_name is None else lax.psum(1, axis_name)


def shard_index(axis_name: AxisName) -> jax.Array:
    return jnp.int32(0) if axis_name is None else lax.axis_index(axis_name)


def gather_rows(x: jax.Array, axis_name: AxisName) -> jax.Array:
    """Concatenate every shard's rows in shard order; the gradient flows back to each owner."""
    return x if axis_name is None else lax.all_gather(x, axis_name, tiled=True)


def global_mean(x: jax.Array, axis_name: AxisName) -> jax.Array:
    return x if axis_name is None else lax.pmean(x, axis_name)


def global_sum(x: jax.Array, axis_name: AxisName) -> jax.Array:
    return x if axis_name is None else lax.psum(x, axis_name)


def global_rows(rows: int, axis_name: AxisName) -> jax.Array:
    """[rows] global indices of this shard's rows (every shard holds `rows` of them)."""
    return shard_index(axis_name) * rows + jnp.arange(rows)


def global_row_keys(key: jax.Array, rows: int, axis_name: AxisName) -> jax.Array:
    """[rows] keys, `fold_in(key, global row)`: a sharded batch draws what one device would."""
    return jax.vmap(lambda r: jax.random.fold_in(key, r))(global_rows(rows, axis_name))
