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
    script = (
        "import os, sys, time\n"
        "if os.environ['VLPJAX_PROCESS_ID'] == '1': print('failing'); sys.exit(3)\n"
        f"time.sleep(60); open({str(marker)!r}, 'w').write('x')\n"
    )
    start = time.monotonic()
    result = _bash(os.path.join(LAUNCH, "local.sh"), "2", "python3", "-c", script)
    assert result.returncode == 3
    assert "[1] failing" in result.stdout
    assert time.monotonic() - start < 30 and not marker.exists()


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


class _FakeService:
    """The coordination service as `lost_processes` sees it: a client answering get_live_nodes."""

    def __init__(self, live_after_polls):
        self.answers = list(live_after_polls)

    def get_live_nodes(self, process_ids):
        live = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return {i: 1 for i in process_ids if i in live}


def _job_of_two(monkeypatch, service):
    from jax._src import distributed as jax_distributed

    from vlpjax.parallel import distributed

    monkeypatch.setattr(jax_distributed.global_state, "client", service)
    monkeypatch.setattr(distributed.jax, "process_count", lambda: 2)
    monkeypatch.setattr(distributed, "_peer_timeout_s", 1)
    monkeypatch.setattr(distributed, "_POLL_S", 0.01)
    monkeypatch.setattr(distributed, "_NOTICE_MARGIN_S", 0)
    return distributed


def test_a_failed_collective_names_the_process_the_service_lost(monkeypatch):
    """gloo fails the collective before the heartbeat timeout; the service notices a poll later."""
    distributed = _job_of_two(monkeypatch, _FakeService([{0, 1}, {0, 1}, {0}]))
    with pytest.raises(distributed.PeerLost, match=r"process 1 of 2 stopped responding.*Received data size"):
        with distributed.naming_lost_peers():
            raise RuntimeError("Gloo: Received data size doesn't match expected size.\nmore")


def test_an_error_with_every_process_alive_is_raised_unchanged(monkeypatch):
    distributed = _job_of_two(monkeypatch, _FakeService([{0, 1}]))
    with pytest.raises(ZeroDivisionError):
        with distributed.naming_lost_peers():
            raise ZeroDivisionError("a bug of this process")
    user_error = InvalidInput("a bad flag")  # a user's error says what to fix; no waiting on peers
    with pytest.raises(InvalidInput):
        with distributed.naming_lost_peers():
            raise user_error


def test_an_unreachable_coordinator_is_named_as_process_0(monkeypatch):
    class Gone:
        def get_live_nodes(self, process_ids):
            raise RuntimeError("UNAVAILABLE: failed to connect")

    distributed = _job_of_two(monkeypatch, Gone())
    with pytest.raises(distributed.PeerLost, match="process 0 of 2"):
        with distributed.naming_lost_peers():
            raise RuntimeError("collective failed")
