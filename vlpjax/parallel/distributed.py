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

from vlpjax.errors import InvalidInput

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


# Set by `initialize`: how long the coordination service waits before it calls a silent process dead.
_peer_timeout_s: int | None = None
_NOTICE_MARGIN_S = 10  # the service's own polling beyond the timeout
# The words of a collective that failed because a peer went away (not any gloo or NCCL failure:
# a bad configuration, with every process alive, must not wait out the timeout).
PEER_LOSS_WORDS = ("connection reset", "connection closed", "remote process exited", "received data size")


def is_transport_error(err: BaseException | None) -> bool:
    """Whether `err`, or an error it was raised from, is a collective that lost its peer."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, jax.errors.JaxRuntimeError) and any(w in str(err).lower() for w in PEER_LOSS_WORDS):
            return True
        err = err.__cause__ or err.__context__
    return False


def _wait_for_the_service(seconds: float) -> None:
    time.sleep(seconds)


@contextlib.contextmanager
def naming_lost_peers() -> Iterator[None]:
    """A collective whose peer was killed fails here in the transport's own words (gloo: "Connection
    reset by peer", or a size mismatch) before the coordination service has noticed the death.
    Such an error is logged, then this process waits out the peer timeout: when a peer is gone,
    JAX ends this process naming it ("stopped sending heartbeats: 1"); when none is, the error is
    raised as it was. Every other error is raised at once (the service is not asked which peers
    live: that call waits for every process to ask too)."""
    try:
        yield
    except Exception as err:
        if _peer_timeout_s is None or not is_transport_error(err):
            raise
        wait = _peer_timeout_s + _NOTICE_MARGIN_S
        first_line = str(err).strip().splitlines()[0]
        logger.error(
            "a collective failed (%s): a peer process may have died; waiting up to %d s for JAX's coordination "
            "service to name it (train.peer_timeout_s=%d)",
            first_line,
            wait,
            _peer_timeout_s,
        )
        _wait_for_the_service(wait)
        raise


def describe_job() -> str:
    return (
        f"process {jax.process_index()} of {jax.process_count()}; "
        f"{jax.local_device_count()} local and {jax.device_count()} global devices ({jax.default_backend()})"
    )
