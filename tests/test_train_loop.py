"""The trainer end to end on tiny data: exact resume after SIGKILL, SIGTERM, pmap == mesh."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from vlpjax.config import load_config
from vlpjax.data.pipeline import train_iterator
from vlpjax.objectives.registry import make_objective
from vlpjax.train import checkpoints
from vlpjax.train.build import create_run, load_data, pipeline_config
from vlpjax.train.metrics_log import read_metrics
from vlpjax.train.steps import Stepper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "clip_shapes.py") + ":tiny"


def _command(workdir, data_dir, *overrides):
    return [
        sys.executable,
        "-m",
        "vlpjax.cli",
        "train",
        "--config",
        RECIPE,
        "--workdir",
        str(workdir),
        f"--config.data.data_dir={data_dir}",
        *overrides,
    ]


def _env():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per run
    env["PYTHONPATH"] = ROOT
    return env


def _final_params(workdir, step):
    saved, got_step = checkpoints.restore_params(str(workdir), step)
    assert got_step == step
    return saved["params"]


LONG = ("--config.train.steps=300", "--config.train.checkpoint_every=10", "--config.train.log_every=50")


def test_sigkill_then_resume_is_bit_identical(tiny_shapes_dir, tmp_path):
    reference = subprocess.run(
        _command(tmp_path / "ref", tiny_shapes_dir, *LONG), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert reference.returncode == 0, reference.stderr[-3000:]

    workdir = tmp_path / "killed"
    proc = subprocess.Popen(
        _command(workdir, tiny_shapes_dir, *LONG),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = workdir / "checkpoints" / "10"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())
    assert saved and saved[-1] < 300, saved

    resumed = subprocess.run(
        _command(workdir, tiny_shapes_dir, *LONG), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    want, got = _final_params(tmp_path / "ref", 300), _final_params(workdir, 300)
    leaves_want, leaves_got = jax.tree.leaves(want), jax.tree.leaves(got)
    assert len(leaves_want) == len(leaves_got) > 10
    for a, b in zip(leaves_want, leaves_got, strict=False):
        np.testing.assert_array_equal(a, b)

    # Metrics of both runs reach the same final step with the same loss.
    def last(w):
        return [m for m in read_metrics(str(w)) if "train/loss" in m][-1]

    assert last(workdir)["step"] == last(tmp_path / "ref")["step"] == 300
    assert last(workdir)["train/loss"] == last(tmp_path / "ref")["train/loss"]


def test_sigterm_saves_and_exits_cleanly(tiny_shapes_dir, tmp_path):
    workdir = tmp_path / "term"
    proc = subprocess.Popen(
        _command(workdir, tiny_shapes_dir, *LONG), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "10").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM: saved step" in out
    step = int(out.split("SIGTERM: saved step ")[1].split()[0])
    assert 10 <= step < 300 and (workdir / "checkpoints" / str(step)).exists()


@pytest.mark.parametrize("recipe", ["clip_shapes", "albef_shapes"])
def test_pmap_and_mesh_steps_give_the_same_losses(tiny_shapes_dir, recipe):
    """albef adds ITM negatives mined across devices and MLM masking, both drawn from the step key."""
    losses = {}
    for mode in ("mesh", "pmap"):
        config = load_config(
            os.path.join(ROOT, "configs", f"{recipe}.py:tiny"),
            [f"--config.data.data_dir={tiny_shapes_dir}", f"--config.train.parallelism={mode}", "--config.mesh.data=8"],
        )
        data = load_data(config)
        run = create_run(config, data.tokenizer.vocab_size)
        stepper = Stepper(config, run, make_objective(config.objectives.to_dict(), data.vocab))
        iterator = train_iterator(data.train_source, data.tokenizer, pipeline_config(config, 1))
        state = stepper.to_device_state(run.state)
        losses[mode] = []
        for _ in range(5):
            state, metrics = stepper(state, stepper.batch(next(iterator)))
            losses[mode].append(float(metrics["loss"]))
    assert losses["mesh"][0] != losses["mesh"][-1]  # the parameters moved
    np.testing.assert_allclose(losses["pmap"], losses["mesh"], rtol=1e-5)


def test_divergence_stops_the_run_and_keeps_the_last_finite_checkpoint(tiny_shapes_dir, tmp_path):
    """lr=1e9 diverges within a few steps: the run must stop non-zero naming the step and the
    metric, and never write a NaN checkpoint (step 1 trains at lr 0: warmup starts at 0)."""
    workdir = tmp_path / "diverged"
    overrides = ("--config.optim.lr=1e9", "--config.train.checkpoint_every=1", "--config.train.keep_checkpoints=2")
    result = subprocess.run(
        _command(workdir, tiny_shapes_dir, *overrides), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 2, result.stdout[-2000:]
    message = result.stderr.strip().splitlines()[-1]  # the last line: the progress bar closed before it
    assert "training diverged at step" in message and "train/" in message, message
    assert "last good checkpoint" in message, message
    saved = sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())
    assert saved and saved[-1] < 8, saved
    stopped_at = int(message.split("diverged at step ")[1].split(":")[0])
    assert saved[-1] < stopped_at
    params = _final_params(workdir, saved[-1])
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    logged = read_metrics(str(workdir))
    assert all("train/grad_norm" in m and "train/param_norm" in m for m in logged if "train/loss" in m)


def test_a_checkpoint_with_a_non_finite_parameter_is_never_written(tiny_shapes_dir, tmp_path):
    """Even with finite step metrics (the guard bypassed), one NaN parameter blocks the save."""
    from vlpjax.train.loop import FiniteGuard, NonFiniteError, SaveWatcher, open_run, save_checkpoint

    config = load_config(RECIPE, [f"--config.data.data_dir={tiny_shapes_dir}"])
    r = open_run(config, str(tmp_path / "run"))
    try:
        save_checkpoint(r, FiniteGuard(r.manager), SaveWatcher(r.manager), 1, force=True)
        leaves, treedef = jax.tree.flatten(r.state.params)
        leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(np.nan)
        r.state = r.state.replace(params=jax.tree.unflatten(treedef, leaves))
        with pytest.raises(NonFiniteError, match="step 2: a parameter is not finite"):
            save_checkpoint(r, FiniteGuard(r.manager), SaveWatcher(r.manager), 2, force=True)
        r.manager.wait_until_finished()
        assert r.manager.all_steps() == [1]
    finally:
        r.manager.close()
        r.log.close()


def test_several_processes_ask_the_preemption_service_with_this_runs_steps(monkeypatch, tmp_path):
    """JAX's service counts each run's steps from 0, so a run resumed at step 10 asks about 1, 2,
    ...; it installs no SIGTERM handler of its own (JAX's catches the signal); orbax never asks."""
    from jax._src import distributed as jax_distributed
    from jax.experimental import multihost_utils

    from vlpjax.train.loop import StopFlag

    asked = []
    manager = checkpoints.checkpoint_manager(str(tmp_path), every=5, keep=2)  # one process builds it
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax_distributed.global_state, "preemption_sync_manager", object())
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda s: asked.append(s) or s == 1)
    handler = signal.getsignal(signal.SIGTERM)
    stop = StopFlag(start=10)
    assert signal.getsignal(signal.SIGTERM) is handler
    assert [stop.stop_after(11), stop.stop_after(12)] == [True, False] and asked == [1, 2]
    stop.restore()
    assert not manager.reached_preemption(1) and asked == [1, 2]  # orbax's own check is off
    manager.close()
