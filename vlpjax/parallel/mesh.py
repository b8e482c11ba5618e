"""The device mesh: axes `data`, `fsdp` and `tensor`, sized from config."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both; fsdp also splits parameters


def resolve_axis_sizes(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """Fill in the one axis given as -1 so that the product is `num_devices`."""
    unknown = [k for k in sizes if k not in MESH_AXES]
    if unknown:
        raise ValueError(f"unknown mesh axes {unknown}; the mesh axes are {MESH_AXES}")
    values = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    free = [axis for axis, v in zip(MESH_AXES, values, strict=False) if v == -1]
    if len(free) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {free}")
    if any(v == 0 or v < -1 for v in values):
        raise ValueError(f"mesh axis sizes must be positive or -1, got {dict(zip(MESH_AXES, values, strict=False))}")
    fixed = int(np.prod([v for v in values if v != -1]))
    if free:
        if num_devices % fixed:
            raise ValueError(f"{num_devices} devices cannot be split into a mesh with fixed axes of product {fixed}")
        values[MESH_AXES.index(free[0])] = num_devices // fixed
    if int(np.prod(values)) != num_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, values, strict=False))} needs {int(np.prod(values))} devices, "
            f"there are {num_devices}"
        )
    return tuple(values)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_axis_sizes({"data": data, "fsdp": fsdp, "tensor": tensor}, len(devices))
    grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
