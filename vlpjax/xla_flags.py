"""XLA flags vlpjax sets for its own processes before JAX starts.

The one flag asks XLA's CPU backend to run matmuls through oneDNN; GPU and TPU backends ignore
it. On jax/jaxlib 0.10.2 it changes nothing measurable: the compiled train step of
benchmarks/train_step.py (tiny config) is the same optimized HLO with the flag on, off or unset
(its matmuls go to YNNPACK fusions either way), and the step ran at 1.90 steps/s with the flag
and 1.90 without (medians of 7 alternating runs of 15 steps on 2 shared cores; median paired
ratio 1.01, run-to-run spread 1.8-3.4 steps/s in both settings). It stays because it does no
harm; compare `benchmarks/train_step.py --xla_flags default` and `--xla_flags none` before
relying on it with another jaxlib. A value the user already put in XLA_FLAGS wins.
"""

from __future__ import annotations

import os

DEFAULT_FLAGS = {"--xla_cpu_use_onednn": "true"}


def apply_default_flags(environ=os.environ) -> None:
    """Must run before `import jax` initialises a backend."""
    current = environ.get("XLA_FLAGS", "")
    extra = [f"{k}={v}" for k, v in DEFAULT_FLAGS.items() if k not in current]
    if extra:
        environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
