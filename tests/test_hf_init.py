"""init.hf: towers start from Hugging Face weights before the first step (a BERT into ALBEF, a
CLIP vision tower into LiT), the recipe's shapes are checked against the checkpoint's first,
and towers of kind 'hf' take the checkpoint's shape."""

import jax
import numpy as np
import pytest

from tests import hf_tiny
from tests.test_recipes import _config
from vlpjax.errors import InvalidInput
from vlpjax.interop.hf import bert_weights
from vlpjax.interop.hf_clip import vision_table
from vlpjax.interop.safetensors_io import read_safetensors
from vlpjax.interop.weight_tables import weights_from_table
from vlpjax.train import rules as rule_lib
from vlpjax.train.build import create_run, load_data


def _parameters(run) -> dict:
    leaves = {}
    for tree in (run.state.params, run.state.frozen):
        for key, value in zip(rule_lib.leaf_paths(tree), jax.tree_util.tree_leaves(tree), strict=True):
            leaves[key] = np.asarray(value)
    return leaves


def _assert_loaded(run, pairs, prefix):
    params = _parameters(run)
    for path, value in pairs:
        np.testing.assert_array_equal(params["/".join(map(str, prefix + path))], value)


def test_init_hf_text_puts_a_bert_into_albef(tiny_shapes_dir, tmp_path):
    config = _config("albef_shapes", tiny_shapes_dir, f"--config.init.hf.text={tmp_path}")
    data = load_data(config)
    hf_tiny.tiny_bert(tmp_path, data.tokenizer.vocab_size)
    run = create_run(config, data.tokenizer.vocab_size)
    _, pairs = bert_weights(str(tmp_path))
    assert len(pairs) == 5 + 2 * 16  # embeddings and their LayerNorm, then 16 tensors per layer
    _assert_loaded(run, pairs, ("txt",))
    # The fusion layer's cross-attention is not in BERT: it keeps its fresh initialisation.
    assert np.abs(_parameters(run)["txt/layers/1/cross/query/kernel"]).max() > 0


def test_init_hf_image_puts_a_clip_vision_tower_into_lit_and_it_stays_frozen(tiny_shapes_dir, tmp_path):
    hf_tiny.tiny_clip_vision(tmp_path)
    config = _config("lit_shapes", tiny_shapes_dir, "--config.init.checkpoint=", f"--config.init.hf.image={tmp_path}")
    data = load_data(config)
    run = create_run(config, data.tokenizer.vocab_size)
    tensors = read_safetensors(str(tmp_path))
    _assert_loaded(run, weights_from_table(tensors, vision_table("clip", 1), str(tmp_path)), ("img",))
    assert "img/blocks/0/attn/query/kernel" in rule_lib.leaf_paths(run.state.frozen)


def test_a_shape_mismatch_names_the_file_and_the_field(tiny_shapes_dir, tmp_path):
    config = _config("albef_shapes", tiny_shapes_dir, f"--config.init.hf.text={tmp_path}")
    data = load_data(config)
    hf_tiny.tiny_bert(tmp_path, data.tokenizer.vocab_size, intermediate_size=48)
    with pytest.raises(InvalidInput, match=r"config.json gives intermediate_size=48, the recipe's tower has .*64"):
        create_run(config, data.tokenizer.vocab_size)
    hf_tiny.tiny_bert(tmp_path, 99)
    with pytest.raises(InvalidInput, match="gives vocab_size=99"):
        create_run(config, data.tokenizer.vocab_size)


def test_towers_of_kind_hf_take_the_checkpoint_shape(tiny_shapes_dir, tmp_path):
    hf_tiny.tiny_clip_vision(tmp_path / "clip")
    lit = _config("lit_hf", tiny_shapes_dir, f"--config.init.hf.image={tmp_path / 'clip'}")
    assert (lit.model.image.width, lit.model.image.pool, lit.model.image.ln_pre) == (32, "cls", True)
    assert lit.data.image_size == 32
    hf_tiny.tiny_bert(tmp_path / "bert", 40, num_hidden_layers=2)
    albef = _config("albef_hf", tiny_shapes_dir, f"--config.init.hf.text={tmp_path / 'bert'}")
    assert (albef.model.text.num_hidden_layers, albef.model.text.cross_attention_from) == (2, 1)
    assert albef.model.text.vocab_size == 40 and albef.data.tokenizer == str(tmp_path / "bert")
    with pytest.raises(ValueError, match="init.hf.image, which is empty"):
        _config("lit_hf", tiny_shapes_dir)
