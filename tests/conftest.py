"""Eight simulated CPU devices for every test, set before JAX is imported anywhere."""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from vlpjax.xla_flags import apply_default_flags  # noqa: E402  (the flags users' runs get)

apply_default_flags()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from tests.shapes_fixture import tiny_shapes_dir  # noqa: E402,F401  (session fixture)
