"""The benchmark's analytic model-FLOP count (its MFU numerator) against a hand count and the
model it times."""

import importlib.util
import os
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from vlpjax.models.vlp import build_dual_encoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("train_step", os.path.join(ROOT, "benchmarks", "train_step.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load_benchmark()


def _tiny(bench):
    # 32 px / patch 16: 4 patches + CLS = 5 image tokens; 8 text tokens.
    return bench.Bench("t", 32, 16, 16, 2, 2, 24, 1, 8, 50, 4, 12)


def test_xla_flags_switch_and_a_plain_import_leaves_the_flags_alone(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=x")
    bench = _load_benchmark()
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=x"
    assert bench._apply_xla_flags(["--configs", "tiny", "--xla_flags", "none"]) == "none"
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=x"
    assert bench._apply_xla_flags(["--configs", "tiny"]) == "default"
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=x --xla_cpu_use_onednn=true"


def test_model_flops_of_a_tiny_config_by_hand(bench):
    """Every forward matmul of the step as (rows, inputs, outputs); training costs 3x forward
    (2x for the patch embedding, whose input, the pixels, needs no gradient)."""
    b = _tiny(bench)
    fwd = lambda m, k, n: 2 * m * k * n  # noqa: E731
    image_layer = [(5, 16, 16)] * 4 + [(5, 16, 64), (5, 64, 16)]  # q, k, v, out; fc1, fc2
    text_layer = [(8, 24, 24)] * 4 + [(8, 24, 96), (8, 96, 24)]
    dense = 3 * sum(fwd(*m) for m in 2 * image_layer + 1 * text_layer)
    dense += 2 * fwd(4, 16 * 16 * 3, 16)  # patch embedding
    dense += 3 * (fwd(1, 16, 12) + fwd(1, 24, 12))  # projections of the pooled tokens
    # Per head: scores [T, T] = q [T, D/h] k^T, then [T, T] x v [T, D/h]; summed over heads.
    attention = 3 * (2 * 2 * (2 * fwd(5, 8, 5)) + 1 * 2 * (2 * fwd(8, 12, 8)))
    logits = 3 * fwd(4, 12, 4)
    flops = bench.model_flops(b)
    assert flops["dense"] == 4 * dense == 2_862_336
    assert flops["attention"] == 4 * attention == 112_128
    assert flops["logits"] == logits == 1_152
    assert flops["total"] == 2_975_616


def test_matmul_params_are_the_kernels_of_the_model_the_benchmark_times(bench):
    b = _tiny(bench)
    model = build_dual_encoder(bench.model_spec(b), rngs=nnx.Rngs(0))
    kernels = {"img": 0, "txt": 0}
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)):
        key = jax.tree_util.keystr(path)
        if "kernel" in key:
            kernels["img" if key.startswith("['img") else "txt"] += int(np.size(leaf))
    assert kernels == bench.matmul_params(b)


@pytest.mark.parametrize("name, tolerance", [("tiny", 0.06), ("vit_s16", 0.01)])
def test_model_flops_are_six_n_t_plus_attention_and_logits(bench, name, tolerance):
    b = bench.CONFIGS[name]
    n = bench.matmul_params(b)
    six_n_t = 6 * b.batch * (n["img"] * bench.image_tokens(b) + n["txt"] * b.text_len)
    flops = bench.model_flops(b)
    # 6NT over-counts a little: the projections at every token (not the pooled one only) and the
    # patch embedding at the CLS token too and with an input gradient; a larger share of N in tiny.
    assert six_n_t * (1 - tolerance) < flops["dense"] <= six_n_t
    assert flops["total"] - six_n_t == pytest.approx(flops["attention"] + flops["logits"], abs=tolerance * six_n_t)
    assert 0 < flops["attention"] < 0.1 * flops["total"]  # short sequences: attention is a small share
