"""Damaged or foreign checkpoints: fall back to the newest one that restores, keep the damaged
one on disk, and name the culprit when a workdir was trained with another model shape."""

import glob
import os

import jax
import numpy as np
import pytest

from vlpjax.config import load_config
from vlpjax.train import checkpoints
from vlpjax.train.loop import train
from vlpjax.train.metrics_log import read_metrics
from vlpjax.train.restore import restore_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "clip_shapes.py") + ":tiny"


def _config(data_dir, *overrides):
    return load_config(RECIPE, [f"--config.data.data_dir={data_dir}", "--config.train.checkpoint_every=4", *overrides])


def _truncate_blobs(step_dir):
    for path in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "r+b") as f:
                f.truncate(max(os.path.getsize(path) // 3, 1))


def _drop_metadata(step_dir):
    os.remove(os.path.join(step_dir, "state", "_METADATA"))


def _empty(step_dir):
    for entry in os.listdir(step_dir):
        path = os.path.join(step_dir, entry)
        if os.path.isdir(path):
            import shutil

            shutil.rmtree(path)
        else:
            os.remove(path)


@pytest.fixture(scope="module")
def trained(tiny_shapes_dir, tmp_path_factory):
    """A finished 8-step run with checkpoints at steps 4 and 8."""
    workdir = str(tmp_path_factory.mktemp("ckpt") / "run")
    train(_config(tiny_shapes_dir), workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]
    return workdir


@pytest.mark.parametrize("damage", [_truncate_blobs, _drop_metadata, _empty])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(trained, tiny_shapes_dir, tmp_path, damage, caplog):
    import shutil

    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    step_dir = os.path.join(workdir, "checkpoints", "8")
    damage(step_dir)
    _, _, state, step = restore_run(_config(tiny_shapes_dir), workdir)  # vlpjax eval's path: read only
    assert step == 4
    assert "checkpoints/8 does not restore" in caplog.text
    assert os.path.isdir(step_dir)  # evaluation leaves the damaged checkpoint where it was
    want, _ = checkpoints.restore_params(trained, 4)
    for a, b in zip(jax.tree.leaves(want["params"]), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Training resumes from step 4 and writes step 8 again; the damaged one is kept aside.
    train(_config(tiny_shapes_dir), workdir)
    assert os.path.isdir(step_dir + checkpoints.UNREADABLE_SUFFIX)
    _, _, _, step = restore_run(_config(tiny_shapes_dir), workdir)
    assert step == 8


def test_resuming_with_another_model_shape_names_the_parameter(trained, tiny_shapes_dir):
    config = _config(tiny_shapes_dir, "--config.model.embed_dim=48")
    with pytest.raises(checkpoints.CheckpointMismatch) as err:
        restore_run(config, trained)
    message = str(err.value)
    assert "another config" in message and "fresh --workdir" in message
    assert "(32, 48)" in message or "(48,)" in message, message


def test_a_failed_asynchronous_save_stops_the_run_before_the_next_save(tiny_shapes_dir, tmp_path, monkeypatch):
    """The save of step 4 fails in the background (a full disk): the run stops naming that
    checkpoint right away, not steps later or never."""
    import errno

    import orbax.checkpoint as ocp

    original = ocp.StandardCheckpointHandler.async_save

    class DiskFull:
        def result(self, timeout=None):
            raise OSError(errno.ENOSPC, "No space left on device")

    async def failing(self, directory, *args, **kwargs):
        futures = await original(self, directory, *args, **kwargs)
        return [*(futures or []), DiskFull()] if "/4" in str(directory) else futures

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", failing)
    workdir = str(tmp_path / "full")
    with pytest.raises(checkpoints.CheckpointSaveFailed, match=r"checkpoints/4 failed: .*No space left on device"):
        train(_config(tiny_shapes_dir, "--config.train.steps=12"), workdir)
    # It stops once the failed save is known, at the latest before the next save is written:
    # no later checkpoint, no training to the end.
    logged = [m["step"] for m in read_metrics(workdir) if "train/loss" in m]
    assert logged and max(logged) <= 8, logged
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "8"))


def test_evaluating_a_run_whose_workdir_cannot_be_written(trained, tiny_shapes_dir, tmp_path, caplog):
    """An archived run on a read-only mount: nothing in the workdir can be created or appended to
    (simulated here, as root, by putting a file or a directory where each output would go)."""
    import shutil

    from vlpjax.train.restore import evaluate_workdir

    workdir = tmp_path / "archived"
    shutil.copytree(trained, workdir)
    shutil.rmtree(workdir / "tensorboard")
    (workdir / "tensorboard").write_text("not a directory")
    (workdir / "metrics.jsonl").unlink()
    (workdir / "metrics.jsonl").mkdir()
    (workdir / "retrieval_top5.png").unlink(missing_ok=True)
    (workdir / "retrieval_top5.png").mkdir()
    before = sorted(os.listdir(workdir / "checkpoints"))
    metrics = evaluate_workdir(_config(tiny_shapes_dir), str(workdir))
    writable = tmp_path / "writable"
    shutil.copytree(trained, writable)
    assert metrics == evaluate_workdir(_config(tiny_shapes_dir), str(writable))  # the same evaluation
    assert set(metrics) >= {"retrieval/t2i_r1", "retrieval/i2t_r1"}
    assert "cannot write metrics in the workdir" in caplog.text
    assert sorted(os.listdir(workdir / "checkpoints")) == before


def test_resuming_training_with_another_optimizer_stops_and_touches_nothing(trained, tiny_shapes_dir, tmp_path):
    """clip_norm=0 drops a stage of the optimizer: its state tree no longer matches. The run must
    stop naming it, not take the checkpoints for damaged ones."""
    import shutil

    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    with pytest.raises(
        checkpoints.CheckpointMismatch, match=r"checkpoints/8 was written by a run with another config: opt_state"
    ):
        train(_config(tiny_shapes_dir, "--config.optim.clip_norm=0.0", "--config.train.steps=12"), workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]


def test_when_no_checkpoint_restores_nothing_is_moved(trained, tiny_shapes_dir, tmp_path):
    import shutil

    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    for step in ("4", "8"):
        _drop_metadata(os.path.join(workdir, "checkpoints", step))
    with pytest.raises(checkpoints.NoUsableCheckpoint, match="none was moved or deleted"):
        train(_config(tiny_shapes_dir), workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]


def test_the_save_thread_probe_reads_what_this_orbax_has(tmp_path):
    """checkpoints._save_running asks orbax's background save thread directly (orbax's own
    is_saving_in_progress stays True after a failed save); fail loudly if orbax renames it."""
    manager = checkpoints.checkpoint_manager(str(tmp_path), every=1, keep=1)
    assert hasattr(manager, "_finalize_thread")
    assert checkpoints._save_running(manager) is False
    manager.close()
