"""launch/: the scripts parse, their dry runs print what they would run, local.sh stops the
job when a process fails; how a process decides whether it joins a job."""

import glob
import os
import subprocess
import time

import pytest

from vlpjax.errors import InvalidInput
from vlpjax.parallel.distributed import cluster_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")


def _bash(*args, **env):
    return subprocess.run(
        ["bash", *args], capture_output=True, text=True, timeout=120, env={**os.environ, **env}, cwd=ROOT
    )


@pytest.mark.parametrize("script", sorted(glob.glob(os.path.join(LAUNCH, "*"))))
def test_every_script_parses(script):
    result = _bash("-n", script)
    assert result.returncode == 0, result.stderr


def test_dry_runs_print_the_commands():
    local = _bash(os.path.join(LAUNCH, "local.sh"), "2", "vlpjax", "train", DRY_RUN="1", LOCAL_DEVICES="4", PORT="1234")
    assert local.stdout.splitlines() == [
        f"XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu VLPJAX_COORDINATOR=127.0.0.1:1234 "
        f"VLPJAX_NUM_PROCESSES=2 VLPJAX_PROCESS_ID={i} vlpjax train"
        for i in (0, 1)
    ]
    slurm = _bash(os.path.join(LAUNCH, "slurm.sbatch"), "vlpjax", "train", "--workdir", "w", DRY_RUN="1")
    assert slurm.stdout.strip() == "srun --ntasks-per-node=1 --kill-on-bad-exit=1 --label vlpjax train --workdir w"
    tpu = _bash(os.path.join(LAUNCH, "tpu_vm.sh"), "vlpjax", "train", DRY_RUN="1", TPU_NAME="pod", ZONE="z")
    assert tpu.stdout.startswith("gcloud compute tpus tpu-vm ssh pod --zone=z --worker=all --command=")
    assert "VLPJAX_AUTO_CLUSTER=1" in tpu.stdout and "vlpjax\\ train" in tpu.stdout


def test_local_launcher_stops_the_job_when_a_process_fails(tmp_path):
    marker = tmp_path / "survivor"
    # Process 1 fails at once; process 0 would write the marker after 60 s if it were not stopped.
    # It ignores SIGTERM, as a JAX process of a job does (a preemption notice): KILL follows.
    script = (
        "import os, signal, sys, time\n"
        "if os.environ['VLPJAX_PROCESS_ID'] == '1': time.sleep(1); print('failing'); sys.exit(3)\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"open({str(tmp_path / 'pid')!r}, 'w').write(str(os.getpid()))\n"
        f"time.sleep(60); open({str(marker)!r}, 'w').write('x')\n"
    )
    start = time.monotonic()
    result = _bash(os.path.join(LAUNCH, "local.sh"), "2", "python3", "-c", script, STOP_GRACE_S="2")
    assert result.returncode == 3
    assert "[1] failing" in result.stdout
    assert "process 1 of 2 exited with status 3" in result.stderr
    assert time.monotonic() - start < 30 and not marker.exists()
    survivor = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{survivor}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{survivor}"), "process 0 outlived the job"


def test_cluster_settings_from_flags_environment_or_cluster():
    assert cluster_settings(environ={}) is None  # one process: nothing to join
    assert cluster_settings("h:1", 2, 1, environ={}) == {
        "coordinator_address": "h:1",
        "num_processes": 2,
        "process_id": 1,
    }
    env = {"VLPJAX_COORDINATOR": "h:2", "VLPJAX_NUM_PROCESSES": "4", "VLPJAX_PROCESS_ID": "3"}
    assert cluster_settings(environ=env)["process_id"] == 3
    assert cluster_settings(process_id=0, environ=env)["process_id"] == 0  # a flag wins
    assert cluster_settings(environ={"SLURM_NTASKS": "8"}) == {}  # JAX reads SLURM itself
    assert cluster_settings(environ={"SLURM_NTASKS": "1"}) is None
    assert cluster_settings(environ={"VLPJAX_AUTO_CLUSTER": "1"}) == {}
    with pytest.raises(InvalidInput, match=r"missing \['num_processes', 'process_id'\]"):
        cluster_settings("h:1", environ={})
    with pytest.raises(InvalidInput, match="outside 0..1"):
        cluster_settings("h:1", 2, 2, environ={})


def _job_of_two(monkeypatch, peer_timeout_s=5):
    """A multi-process run as naming_lost_peers sees it; returns the waits it would make."""
    from vlpjax.parallel import distributed

    waits = []
    monkeypatch.setattr(distributed, "_peer_timeout_s", peer_timeout_s)
    monkeypatch.setattr(distributed, "_wait_for_the_service", waits.append)
    return distributed, waits


def test_a_failed_collective_waits_for_the_service_to_name_the_lost_peer(monkeypatch, caplog):
    """gloo fails the collective before the heartbeat timeout: wait it out (JAX then ends the
    process naming the peer), and if nobody is declared dead, raise the collective's own error."""
    import jax

    distributed, waits = _job_of_two(monkeypatch, peer_timeout_s=5)
    failed = jax.errors.JaxRuntimeError("UNKNOWN: Gloo AllGather failed: Read error: Connection reset by peer")
    with pytest.raises(jax.errors.JaxRuntimeError) as raised:
        with distributed.naming_lost_peers():
            raise failed
    assert raised.value is failed and waits == [5 + distributed._NOTICE_MARGIN_S]
    assert "a peer process may have died" in caplog.text and "Connection reset by peer" in caplog.text


def test_any_other_error_is_raised_at_once(monkeypatch):
    """A bug of this process, a user's error or an XLA error that is not the transport's: no wait
    (a process that waits while its peers train on would hide its traceback)."""
    import jax

    distributed, waits = _job_of_two(monkeypatch)
    for error in (
        ZeroDivisionError("a bug"),
        InvalidInput("a bad flag"),
        jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: out of memory"),
        jax.errors.JaxRuntimeError("UNKNOWN: Gloo context initialization failed: bad address"),
    ):
        with pytest.raises(type(error)):
            with distributed.naming_lost_peers():
                raise error
    assert waits == []
    distributed, waits = _job_of_two(monkeypatch, peer_timeout_s=None)  # one process: nothing to wait for
    with pytest.raises(jax.errors.JaxRuntimeError):
        with distributed.naming_lost_peers():
            raise jax.errors.JaxRuntimeError("UNKNOWN: Gloo AllGather failed: Connection reset by peer")
    assert waits == []


def test_a_lost_peer_is_recognised_behind_the_error_raised_from_it():
    import jax

    from vlpjax.parallel.distributed import is_transport_error

    lost = jax.errors.JaxRuntimeError("UNKNOWN: Gloo all-reduce failed: Received data size doesn't match")
    try:
        try:
            raise lost
        except jax.errors.JaxRuntimeError as err:
            raise RuntimeError("evaluating retrieval") from err
    except RuntimeError as wrapped:
        assert is_transport_error(wrapped)
    assert not is_transport_error(RuntimeError("evaluating retrieval"))
