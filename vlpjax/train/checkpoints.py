"""orbax checkpoints: the train state plus the data iterator's state, written atomically.

orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoint as the latest good one.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def checkpoint_manager(workdir: str, *, every: int, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        save_interval_steps=max(every, 1),
        enable_async_checkpointing=async_save,
        create=True,
    )
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR), options=options)


def save(manager: ocp.CheckpointManager, step: int, state, data_state: dict | None, *, force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_state is not None:
        items["data"] = ocp.args.JsonSave(data_state)
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


def abstract_like(state):
    """Shapes, dtypes and shardings of `state`: the restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def restore(
    manager: ocp.CheckpointManager, state_template, step: int | None = None, *, with_data: bool = True
) -> tuple[Any, dict | None, int]:
    """(state, data_state, step) of the latest (or given) checkpoint, laid out like the template."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    items = {"state": ocp.args.StandardRestore(abstract_like(state_template))}
    if with_data and "data" in manager.item_metadata(step):
        items["data"] = ocp.args.JsonRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], restored.get("data") if with_data else None, step


def restore_params(directory: str, step: int | None = None):
    """Only the parameters of another run's checkpoint (LiT: a pretrained image tower)."""
    manager = ocp.CheckpointManager(
        os.path.join(os.path.abspath(directory), CHECKPOINT_DIR), options=ocp.CheckpointManagerOptions(create=False)
    )
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {directory!r} (looked in {manager.directory})")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))
    manager.close()
    return restored["state"], step
