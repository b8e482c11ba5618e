"""XLA flags vlpjax sets for its own processes before JAX starts.

On CPU, routing XLA's matmuls through oneDNN roughly doubles dense-layer throughput (see
benchmarks/train_step.py); the flag is ignored by GPU and TPU backends. A value the user
already put in XLA_FLAGS wins.
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
