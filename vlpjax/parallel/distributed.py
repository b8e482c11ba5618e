"""Multi-process start-up through `jax.distributed`: TPU pods, SLURM GPU jobs, local CPU tests."""

from __future__ import annotations

import jax


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    cpu_collectives: str = "gloo",
) -> None:
    """Join the job. With no arguments JAX detects TPU pods and SLURM from the environment.

    On CPU-only hosts, cross-process collectives need an implementation (gloo) chosen before
    the backend starts; it is harmless elsewhere.
    """
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
