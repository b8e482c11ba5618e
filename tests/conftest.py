"""Eight simulated CPU devices for every test, set before JAX is imported anywhere.

The tests compile hundreds of small programs and run each a few times, so LLVM's optimisation
of the generated CPU code costs more than it saves: at level 0 tests/test_recipes.py took
1 min 32 s against 1 min 45 s. Only the machine code changes; XLA's HLO passes, and with them
the memory plans some tests measure, are those of a user's run.
"""

import os

for _FLAG in ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0"):
    if _FLAG not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from vlpjax.xla_flags import apply_default_flags  # noqa: E402  (the flags users' runs get)

apply_default_flags()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402

from tests.shapes_fixture import tiny_shapes_dir  # noqa: E402,F401  (session fixture)


@pytest.fixture(scope="session")
def hf_recipe_args(tmp_path_factory):
    """The --config.init.hf.* overrides the *_hf recipes need: tiny Hugging Face directories."""
    from tests import hf_tiny

    root = tmp_path_factory.mktemp("hf")
    hf_tiny.tiny_clip_vision(root / "clip")
    hf_tiny.tiny_bert(root / "bert", 40)
    return {
        "lit_hf": [f"--config.init.hf.image={root / 'clip'}"],
        "albef_hf": [f"--config.init.hf.text={root / 'bert'}"],
    }
