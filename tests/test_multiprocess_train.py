"""`vlpjax train` as 2 processes x 4 devices (launch/local.sh, gloo on 127.0.0.1) trains exactly
what one process with 8 devices trains: the same losses at every logged step, the same weights."""

import contextlib
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from vlpjax.train import checkpoints
from vlpjax.train.metrics_log import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch", "local.sh")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **extra}


def _train_args(recipe, workdir, data_dir):
    config = os.path.join(ROOT, "configs", f"{recipe}.py") + ":tiny"
    return [
        sys.executable,
        "-m",
        "vlpjax.cli",
        "train",
        "--config",
        config,
        "--workdir",
        str(workdir),
        f"--config.data.data_dir={data_dir}",
    ]


def _run(command, env):
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    if result.returncode:
        open("/tmp/mp_fail.log", "w").write(result.stdout + "\n----\n" + result.stderr)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    return result


@pytest.mark.parametrize("recipe", ["clip_shapes", "albef_shapes"])
def test_two_processes_train_what_one_process_trains(recipe, tiny_shapes_dir, tmp_path):
    """albef adds ITM hard negatives mined over the global batch and MLM masks drawn per global row."""
    one, two = tmp_path / "one", tmp_path / "two"
    _run(
        _train_args(recipe, one, tiny_shapes_dir),
        _env(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"),
    )
    result = _run(["bash", LAUNCH, "2", *_train_args(recipe, two, tiny_shapes_dir)], _env(LOCAL_DEVICES="4"))
    assert "[0] joined the job: process 0 of 2; 4 local and 8 global devices (cpu)" in result.stdout
    losses = [{m["step"]: m["train/loss"] for m in read_metrics(str(w)) if "train/loss" in m} for w in (one, two)]
    assert sorted(losses[0]) == sorted(losses[1]) == [2, 4, 6, 8]
    np.testing.assert_allclose([losses[1][s] for s in losses[0]], list(losses[0].values()), rtol=1e-5)
    want, got = (checkpoints.restore_params(str(w), 8)[0]["params"] for w in (one, two))
    leaves = list(zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got), strict=True))
    assert len(leaves) > 10
    for (path, a), b in leaves:
        name = jax.tree_util.keystr(path)
        if "['key']['bias']" in name:
            # An attention key bias has an exactly zero gradient (softmax ignores a per-query
            # shift), so its gradient is rounding noise that Adam scales up to +-lr per step: it
            # can differ in sign between any two reduction orders. Both stay near zero.
            assert np.abs(np.asarray(a)).max() < 1e-3 and np.abs(np.asarray(b)).max() < 1e-3, name
            continue
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6, err_msg=name)


def _losses(workdir) -> dict:
    return {m["step"]: m["train/loss"] for m in read_metrics(str(workdir)) if "train/loss" in m}


def _params(workdir, step):
    return jax.tree.leaves(checkpoints.restore_params(str(workdir), step)[0]["params"])


RESUMABLE = ("--config.train.steps=12", "--config.train.checkpoint_every=4", "--config.train.keep_checkpoints=5")


def test_a_checkpoint_restores_onto_another_mesh_and_another_process_count(tiny_shapes_dir, tmp_path):
    """Written on 1 process x data=8, continued from step 8 on data=2 x fsdp=4 (each array
    resharded on restore), and on 2 processes x 4 devices: the losses of steps 10 and 12 equal
    those of the run that never moved."""
    import shutil

    one_process = _env(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    stayed = tmp_path / "stayed"
    _run([*_train_args("clip_shapes", stayed, tiny_shapes_dir), *RESUMABLE, "--config.mesh.data=8"], one_process)
    want = _losses(stayed)
    for name, command, env in (
        ("fsdp", [*RESUMABLE, "--config.mesh.data=2", "--config.mesh.fsdp=4"], one_process),
        ("processes", list(RESUMABLE), _env(LOCAL_DEVICES="4")),
    ):
        moved = tmp_path / name
        shutil.copytree(stayed, moved)
        shutil.rmtree(moved / "checkpoints" / "12")
        args = [*_train_args("clip_shapes", moved, tiny_shapes_dir), *command]
        result = _run(["bash", LAUNCH, "2", *args] if name == "processes" else args, env)
        assert "resumed from" in result.stdout and "checkpoints/8" in result.stdout
        got = {step: loss for step, loss in _losses(moved).items()}
        np.testing.assert_allclose([got[10], got[12]], [want[10], want[12]], rtol=1e-5, err_msg=name)


def _trainer_pids(workdir) -> list[int]:
    """The `python -m vlpjax.cli train ... --workdir WORKDIR` processes (not their launcher)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode().split("\0")
        except (OSError, ValueError):
            continue
        if argv[0] == sys.executable and argv[1:3] == ["-m", "vlpjax.cli"] and str(workdir) in argv:
            pids.append(int(entry))
    return pids


INTERRUPTIBLE = ("--config.train.steps=30", "--config.train.checkpoint_every=5", "--config.train.log_every=5")


@pytest.fixture(scope="module")
def whole_two_process_run(tiny_shapes_dir, tmp_path_factory):
    """30 steps on 2 processes x 4 devices, never interrupted: what an interrupted run must end as."""
    whole = tmp_path_factory.mktemp("whole")
    _run(
        ["bash", LAUNCH, "2", *_train_args("clip_shapes", whole, tiny_shapes_dir), *INTERRUPTIBLE],
        _env(LOCAL_DEVICES="4"),
    )
    return whole


def _start_job_and_wait_for_checkpoint_5(workdir, data_dir):
    """(launcher process, its command) once checkpoint 5 exists."""
    import time

    command = ["bash", LAUNCH, "2", *_train_args("clip_shapes", workdir, data_dir), *INTERRUPTIBLE]
    proc = subprocess.Popen(
        command, env=_env(LOCAL_DEVICES="4"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "5").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the job ended before it could be interrupted"
    return proc, command


def _saved_steps(workdir) -> list[int]:
    return sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())


def _resumes_to_the_whole_run(command, workdir, whole):
    result = _run(command, _env(LOCAL_DEVICES="4"))
    assert "resumed from" in result.stdout
    for a, b in zip(_params(whole, 30), _params(workdir, 30), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _losses(whole)[30] == _losses(workdir)[30]


def test_two_processes_killed_after_a_checkpoint_resume_bit_identically(
    whole_two_process_run, tiny_shapes_dir, tmp_path
):
    import signal

    killed = tmp_path / "killed"
    proc, command = _start_job_and_wait_for_checkpoint_5(killed, tiny_shapes_dir)
    trainers = _trainer_pids(killed)
    assert len(trainers) == 2, trainers
    for pid in trainers:  # SIGKILL to both training processes at once
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    saved = _saved_steps(killed)
    assert saved and saved[-1] < 30, saved
    _resumes_to_the_whole_run(command, killed, whole_two_process_run)


def _process_id(pid: int) -> int:
    with open(f"/proc/{pid}/environ", "rb") as f:
        variables = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    return int(variables[b"VLPJAX_PROCESS_ID"])


def test_sigterm_to_one_process_stops_every_process_at_the_same_step(whole_two_process_run, tiny_shapes_dir, tmp_path):
    """A preemption notice reaches one process (here process 1, not the coordinator): both save one
    checkpoint of the same step and exit 0, and the job resumes from it bit-identically. A process
    that saved alone would wait in the save's collectives while its peer trains on."""
    import signal

    stopped = tmp_path / "stopped"
    proc, command = _start_job_and_wait_for_checkpoint_5(stopped, tiny_shapes_dir)
    trainers = {_process_id(pid): pid for pid in _trainer_pids(stopped)}
    assert sorted(trainers) == [0, 1], trainers
    os.kill(trainers[1], signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:  # the job hangs: leave no process behind
        for pid in [*trainers.values(), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, output[-3000:]
    step = int(output.split("SIGTERM: saved step ")[1].split()[0])
    assert 5 < step < 30 and _saved_steps(stopped)[-1] == step, (step, _saved_steps(stopped))
    _resumes_to_the_whole_run(command, stopped, whole_two_process_run)


def test_a_dead_peer_stops_the_other_process_within_the_peer_timeout(tiny_shapes_dir, tmp_path):
    """SIGKILL to process 1 of 2 (started directly, without launch/local.sh, which would stop the
    other itself): process 0 must exit non-zero within train.peer_timeout_s and name process 1,
    not wait in a collective for ever."""
    import signal
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path / "peer"
    args = [
        *_train_args("clip_shapes", workdir, tiny_shapes_dir),
        "--config.train.steps=100000",
        "--config.train.checkpoint_every=5",
        "--config.train.peer_timeout_s=5",
    ]
    common = dict(
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        VLPJAX_COORDINATOR=f"127.0.0.1:{port}",
        VLPJAX_NUM_PROCESSES="2",
    )
    logs = [open(tmp_path / f"process{i}.log", "w") for i in (0, 1)]
    procs = [
        subprocess.Popen(
            args, env=_env(**common, VLPJAX_PROCESS_ID=str(i)), cwd=ROOT, stdout=logs[i], stderr=subprocess.STDOUT
        )
        for i in (0, 1)
    ]
    try:
        deadline = time.time() + 300
        while not (workdir / "checkpoints" / "5").exists() and time.time() < deadline:
            assert all(p.poll() is None for p in procs), "a process ended before the test could kill its peer"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.time()
        procs[0].wait(timeout=120)
        waited = time.time() - killed_at
    finally:
        for p in procs:
            p.kill()
        for f in logs:
            f.close()
    assert procs[0].returncode != 0
    assert waited < 5 + 30, waited  # the timeout plus the coordination service's polling
    output = (tmp_path / "process0.log").read_text()
    # JAX's coordination service names task 1 after the timeout. A collective that was under way
    # may fail first: an error raised in Python waits for the service's verdict, but gloo can
    # also abort the process at once from its own thread ("Received data size doesn't match",
    # std::terminate), before anyone names the peer; launch/local.sh names the process that died.
    named = "stopped sending heartbeats):\n1\n" in output
    aborted_by_gloo = procs[0].returncode in (-signal.SIGABRT, 128 + signal.SIGABRT) and "gloo" in output.lower()
    assert named or aborted_by_gloo, (procs[0].returncode, output[-2000:])
