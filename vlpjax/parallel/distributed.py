"""Multi-process start-up through `jax.distributed`: TPU pods, SLURM GPU jobs, local CPU tests.

`cluster_settings` decides whether this process is one of several, from explicit flags, the
VLPJAX_* variables, or a cluster environment JAX recognises itself (SLURM, Open MPI, TPU VM);
`initialize` joins the job. Both must run before any other JAX call starts a backend.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Iterator, Mapping

import jax
from jax._src import distributed as jax_distributed

from vlpjax.errors import InvalidInput, UserError

logger = logging.getLogger(__name__)

ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "VLPJAX_COORDINATOR", "VLPJAX_NUM_PROCESSES", "VLPJAX_PROCESS_ID"
ENV_AUTO = "VLPJAX_AUTO_CLUSTER"


def _several(environ: Mapping[str, str], name: str) -> bool:
    try:
        return int(environ.get(name, "1")) > 1
    except ValueError:
        return False


def detected_cluster(environ: Mapping[str, str] = os.environ) -> bool:
    """An environment in which jax.distributed.initialize() finds its peers by itself.
    VLPJAX_AUTO_CLUSTER=1 says so where nothing else shows it (launch/tpu_vm.sh sets it)."""
    multi_host_tpu = len([h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
    forced = environ.get(ENV_AUTO) == "1"
    return forced or _several(environ, "SLURM_NTASKS") or _several(environ, "OMPI_COMM_WORLD_SIZE") or multi_host_tpu


def cluster_settings(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] = os.environ,
) -> dict | None:
    """The keyword arguments of `initialize` for this process, or None when it runs alone.

    Flags win over VLPJAX_COORDINATOR / VLPJAX_NUM_PROCESSES / VLPJAX_PROCESS_ID; when neither
    names a job, a SLURM, Open MPI or multi-host TPU environment gives {} (JAX reads it)."""
    coordinator = coordinator or environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _int(environ, ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _int(environ, ENV_PROCESS_ID)
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise InvalidInput(
                f"joining a job needs --coordinator, --num_processes and --process_id; missing {missing}"
            )
        if not 0 <= process_id < num_processes:
            raise InvalidInput(f"--process_id {process_id} is outside 0..{num_processes - 1}")
        if num_processes == 1:
            return None
        return {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}
    return {} if detected_cluster(environ) else None


def _int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"{name}={value!r} is not an integer") from None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    peer_timeout_s: int = 300,
    cpu_collectives: str = "gloo",
) -> None:
    """Join the job. With no arguments JAX detects TPU pods, SLURM and Open MPI from the environment.

    `peer_timeout_s`: a process that has not been heard from for this long is taken for dead,
    and the job's other processes stop instead of waiting for it in a collective.
    On CPU-only hosts, cross-process collectives need an implementation (gloo) chosen before
    the backend starts; it is harmless elsewhere.
    """
    global _peer_timeout_s
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    _peer_timeout_s = peer_timeout_s
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=peer_timeout_s,
    )


class PeerLost(UserError, RuntimeError):
    """Another process of the job died; this one stops rather than wait or retry."""


# Set by `initialize`: how long the coordination service waits before it calls a silent process dead.
_peer_timeout_s: int | None = None
_POLL_S = 0.5
_NOTICE_MARGIN_S = 5  # the service's own polling beyond the timeout


def lost_processes(wait_s: float) -> list[int]:
    """The job's processes the coordination service no longer hears from, waiting up to `wait_s`
    for it to notice (it needs the heartbeat timeout). [0] when the coordinator itself is gone."""
    client = getattr(jax_distributed.global_state, "client", None)
    if client is None:
        return []
    everyone = list(range(jax.process_count()))
    deadline = time.monotonic() + wait_s
    while True:
        try:
            live = client.get_live_nodes(everyone)
        except Exception:  # noqa: BLE001 - any failure to reach the service means process 0 is gone
            return [0]
        lost = sorted(set(everyone) - set(live))
        if lost or time.monotonic() >= deadline:
            return lost
        time.sleep(_POLL_S)


@contextlib.contextmanager
def naming_lost_peers() -> Iterator[None]:
    """A collective whose peer was killed fails in this process with the transport's own words
    (gloo: "Received data size doesn't match", NCCL: a timeout) before the coordination service
    has noticed the death. When a multi-process run fails, ask the service which process is gone
    and say so; an error with every process alive is re-raised unchanged."""
    try:
        yield
    except Exception as err:
        if _peer_timeout_s is None or isinstance(err, UserError):
            raise
        lost = lost_processes(_peer_timeout_s + _NOTICE_MARGIN_S)
        if not lost:
            raise
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PeerLost(
            f"process {', '.join(map(str, lost))} of {jax.process_count()} stopped responding "
            f"(no heartbeat for train.peer_timeout_s={_peer_timeout_s} s); this process stops too. "
            f"Its own error was: {first_line}"
        ) from err


def describe_job() -> str:
    return (
        f"process {jax.process_index()} of {jax.process_count()}; "
        f"{jax.local_device_count()} local and {jax.device_count()} global devices ({jax.default_backend()})"
    )
