"""model.dtype=bfloat16 in every recipe: each `:tiny` variant trains 30 steps with bf16
matmuls (fp32 parameters, optimizer state, norms, softmax and losses) without a non-finite
value, and ends within 5% of the loss of the same run in float32."""

import os
import shutil

import numpy as np
import pytest
from flax import nnx

from tests.shapes_fixture import TINY_DATA
from tests.train_helpers import ROOT, recipe_losses
from vlpjax.data.builders import dataset_dir, load_builder
from vlpjax.data.tokenizer import TOKENIZER_FILE, TextTokenizer
from vlpjax.interop.hf_lm import save_decoder_lm
from vlpjax.models.lm import DecoderLM, DecoderLMConfig

STEPS = 30
RECIPES = (
    "clip_shapes", "siglip_shapes", "lit_shapes", "albef_shapes", "meter_shapes", "vilt_shapes", "uniter_regions",
    "vqa_shapes", "lm_shapes", "flamingo_shapes", "coca_shapes", "prefixlm_shapes", "blip_shapes", "vqa_gen_shapes",
    "lit_t5", "detector_shapes", "uniter_detector",
)  # fmt: skip


# These build lit_shapes' and albef_shapes' models with a tower shaped by a Hugging Face
# directory (tests/test_hf_init.py); the towers themselves are covered above.
FROM_HF = ("lit_hf", "albef_hf")


def test_every_recipe_is_covered():
    recipes = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))
    assert sorted(RECIPES + FROM_HF) == recipes


@pytest.fixture(scope="module")
def tiny_lm_dir(tiny_shapes_dir, tmp_path_factory):
    """A random GPT-2 in the Hugging Face layout over the shapes tokenizer, for Flamingo."""
    dataset = load_builder("synthetic_shapes", tiny_shapes_dir, **TINY_DATA)
    tokenizer = os.path.join(dataset_dir(dataset), TOKENIZER_FILE)
    vocab = TextTokenizer(tokenizer).vocab_size
    config = DecoderLMConfig(arch="gpt2", vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=2,
                             intermediate_size=64, max_positions=64)  # fmt: skip
    path = str(tmp_path_factory.mktemp("lm"))
    save_decoder_lm(DecoderLM(config, rngs=nnx.Rngs(0)), path)
    shutil.copy(tokenizer, os.path.join(path, TOKENIZER_FILE))
    return path


def _overrides(recipe, data_dir, lm_dir):
    # From scratch (no init.checkpoint): the dtype is what is compared.
    out = [f"--config.data.data_dir={data_dir}", f"--config.train.steps={STEPS}", "--config.optim.warmup_steps=5"]
    out.append("--config.init.checkpoint=")
    if recipe == "flamingo_shapes":
        out.append(f"--config.model.lm.path={lm_dir}")
    return out


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_in_bfloat16_like_float32(recipe, tiny_shapes_dir, tiny_lm_dir, tmp_path):
    overrides = _overrides(recipe, tiny_shapes_dir, tiny_lm_dir)
    fp32 = recipe_losses(recipe, [*overrides, "--config.model.dtype=float32"], str(tmp_path / "fp32"), STEPS)
    bf16 = recipe_losses(recipe, [*overrides, "--config.model.dtype=bfloat16"], str(tmp_path / "bf16"), STEPS)
    assert np.isfinite(bf16).all(), bf16
    assert fp32[-1] < fp32[0]  # it trained: the comparison is of two learning runs
    # The final loss: the mean of the last three steps, as one step's batch is noisy.
    final32, final16 = fp32[-3:].mean(), bf16[-3:].mean()
    print(f"{recipe}: fp32 {fp32[0]:.4f} -> {final32:.4f}, bf16 {bf16[0]:.4f} -> {final16:.4f}")
    assert abs(final16 - final32) <= 0.05 * final32, (final32, final16)
    assert not np.array_equal(fp32, bf16)  # the switch took effect
