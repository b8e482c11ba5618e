"""orbax checkpoints: the train state plus the data iterator's state, written atomically.

orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoint as the latest good one. A checkpoint that is
damaged after the fact (truncated files, a missing metadata file, an empty step directory) is
skipped with a warning in favour of the newest one that restores; it is never deleted.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from vlpjax.errors import UserError

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
UNREADABLE_SUFFIX = ".unreadable"  # a damaged step directory, moved aside so the run can write that step again


class CheckpointMismatch(UserError, ValueError):
    """The checkpoint holds parameters of another shape than the config builds."""


class NoUsableCheckpoint(UserError, FileNotFoundError):
    """Checkpoints exist, but none of them restores."""


class CheckpointSaveFailed(UserError, OSError):
    """An asynchronous save failed (a full disk, a vanished mount)."""


def checkpoint_manager(
    workdir: str, *, every: int, keep: int, async_save: bool = True, read_only: bool = False
) -> ocp.CheckpointManager:
    """`read_only`: for evaluating a run where it lies (an archive may be a read-only mount)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        save_interval_steps=max(every, 1),
        enable_async_checkpointing=async_save and not read_only,
        create=not read_only,
        # The unfinished save of a killed run; one process cleans, so two never race on a directory.
        cleanup_tmp_directories=not read_only and jax.process_index() == 0,
        read_only=read_only,
    )
    # Named handlers let item_metadata read a step's shapes before (and without) restoring it.
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
    manager = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR), options=options, item_handlers=handlers
    )
    # The loop alone asks JAX's preemption service (train/loop.py StopFlag) and forces that save.
    # orbax would ask too, with global steps and from its finalize thread (an older step, on
    # process 0 only), which moves the service's step counters under the loop's feet.
    manager.reached_preemption = _never
    return manager


def _never(step: int) -> bool:
    return False


def save(manager: ocp.CheckpointManager, step: int, state, data_state: dict | None, *, force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_state is not None:
        items["data"] = ocp.args.JsonSave(data_state)
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


def _save_running(manager: ocp.CheckpointManager) -> bool:
    """Whether the background save thread is still at work. orbax's own is_saving_in_progress
    stays True after a failed save, so the thread is asked directly (orbax < 0.13 keeps it here)."""
    thread = getattr(manager, "_finalize_thread", None)
    if thread is None:
        return manager.is_saving_in_progress()
    return bool(thread.map(lambda t: t is not None and t.is_alive()))


def raise_failed_saves(manager: ocp.CheckpointManager, step: int, *, wait: bool = False) -> None:
    """Surface a finished asynchronous save's error now, naming the checkpoint, instead of at some
    later save (`wait`: wait for the pending save first). A save still running is left alone."""
    try:
        if wait or not _save_running(manager):
            manager.wait_until_finished()  # returns at once when nothing runs; raises a failed save's error
        manager.check_for_errors()
    except OSError as err:  # a full disk, a vanished or read-only mount: the user's to fix
        raise CheckpointSaveFailed(
            f"saving checkpoint {manager.directory}/{step} failed: {type(err).__name__}: {err}; "
            "free space or fix the workdir, then resume (the checkpoints before it are intact)"
        ) from err


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


def _path_key(path) -> str:
    parts = []
    for key in path:
        part = getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))
        if part != "value":  # nnx Variables add a trailing .value; the checkpoint's tree may not
            parts.append(str(part))
    return "/".join(parts)


def _shapes(tree) -> dict[str, tuple]:
    return {_path_key(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree) if hasattr(x, "shape")}


def first_mismatch(saved_state, template) -> str | None:
    """The first leaf whose presence or shape differs between a checkpoint's state metadata and
    the state the config builds (parameters first, then optimizer state), described for a
    message; None when the trees agree."""
    saved, wanted = _shapes(saved_state), _shapes(template)
    params_first = sorted(set(saved) | set(wanted), key=lambda p: (not p.startswith(("params/", "frozen/")), p))
    for path in params_first:
        if path not in saved:
            return f"{path} (shape {wanted[path]}) is not in the checkpoint"
        if path not in wanted:
            return f"{path} is in the checkpoint but not in the state the config builds"
        if saved[path] != wanted[path]:
            return f"{path} has shape {saved[path]} in the checkpoint, the config builds {wanted[path]}"
    return None


def _state_metadata(manager: ocp.CheckpointManager, step: int):
    saved = manager.item_metadata(step)["state"]
    if saved is None:
        raise ValueError("no state metadata")
    return saved


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
    """Rename damaged steps out of orbax's way (it would refuse to write those steps again); the
    files stay for inspection. One process renames, the others wait for it."""
    directory = str(manager.directory)
    if jax.process_index() == 0:
        for step in steps:
            source = os.path.join(directory, str(step))
            if not os.path.isdir(source):
                continue
            target, n = source + UNREADABLE_SUFFIX, 1
            while os.path.exists(target):
                target, n = f"{source}{UNREADABLE_SUFFIX}{n}", n + 1
            os.rename(source, target)
            logger.warning("moved the unreadable checkpoint to %s (kept for inspection)", target)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("vlpjax: damaged checkpoints set aside")
    manager.reload()


def _reason(step: int, err: Exception) -> str:
    first_line = str(err).splitlines()[0][:200] if str(err) else ""
    return f"step {step}: {type(err).__name__}: {first_line}"


def restore_newest_good(
    manager: ocp.CheckpointManager, state_template, *, with_data: bool = True, set_aside: bool = False
) -> tuple[Any, dict | None, int]:
    """restore() of the newest checkpoint that restores; the newer ones that do not are skipped
    with a warning. `set_aside`: once an older checkpoint has restored, the skipped ones are
    renamed so the run can write those steps again (never when none restores: then nothing is
    touched). A checkpoint whose state tree differs from the config's stops with
    CheckpointMismatch, since an older one would not fit either."""
    skipped: list[tuple[int, str]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        if not os.path.isdir(os.path.join(str(manager.directory), str(step))):
            continue  # listed by orbax but gone: a save that a kill interrupted, or a deleted step
        try:
            saved = _state_metadata(manager, step)
        except Exception as err:  # noqa: BLE001 - an unreadable checkpoint is skipped, never deleted
            skipped.append((step, _reason(step, err)))
            logger.warning("checkpoint %s/%d does not restore (%s)", manager.directory, step, skipped[-1][1])
            continue
        mismatch = first_mismatch(saved, state_template)
        if mismatch:
            raise CheckpointMismatch(
                f"{manager.directory}/{step} was written by a run with another config: {mismatch}. "
                "Use the config that trained it, or a fresh --workdir to start over."
            )
        try:
            restored = restore(manager, state_template, step, with_data=with_data)
        except Exception as err:  # noqa: BLE001
            skipped.append((step, _reason(step, err)))
            logger.warning("checkpoint %s/%d does not restore (%s)", manager.directory, step, skipped[-1][1])
            continue
        if skipped:
            logger.warning("restored the older checkpoint %s/%d instead", manager.directory, step)
            if set_aside:
                _set_aside(manager, [s for s, _ in skipped])
        return restored
    if skipped:
        raise NoUsableCheckpoint(
            f"no checkpoint in {manager.directory} restores (none was moved or deleted): "
            + "; ".join(reason for _, reason in skipped)
        )
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")


def restore_params(directory: str, step: int | None = None):
    """Only the parameters of another run's checkpoint (LiT: a pretrained image tower), as host
    numpy arrays: whatever mesh and number of processes wrote it, the caller lays them out."""
    manager = ocp.CheckpointManager(
        os.path.join(os.path.abspath(directory), CHECKPOINT_DIR),
        options=ocp.CheckpointManagerOptions(create=False, read_only=True),
        item_handlers={"state": ocp.PyTreeCheckpointHandler()},
    )
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory!r} (looked in {manager.directory})")
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), _state_metadata(manager, step))
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(restore_args=as_numpy)))
    finally:
        manager.close()
    return restored["state"], step
