"""init.hf: towers start from Hugging Face weights before the first step (a BERT into ALBEF, a
CLIP vision tower into LiT), the recipe's shapes are checked against the checkpoint's first,
and towers of kind 'hf' take the checkpoint's shape."""

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

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


def _shapes_vocab(data_dir) -> int:
    return load_data(_config("albef_shapes", data_dir)).tokenizer.vocab_size


def test_init_hf_text_puts_a_bert_into_albef(tiny_shapes_dir, tmp_path):
    vocab = _shapes_vocab(tiny_shapes_dir)
    hf_tiny.tiny_bert(tmp_path, vocab)
    run = create_run(_config("albef_shapes", tiny_shapes_dir, f"--config.init.hf.text={tmp_path}"), vocab)
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
    vocab = _shapes_vocab(tiny_shapes_dir)
    hf_tiny.tiny_bert(tmp_path, vocab, intermediate_size=48)
    config = _config("albef_shapes", tiny_shapes_dir, f"--config.init.hf.text={tmp_path}")
    with pytest.raises(InvalidInput, match=r"config.json gives intermediate_size=48, the recipe's tower has .*64"):
        create_run(config, vocab)
    hf_tiny.tiny_bert(tmp_path, 99)
    with pytest.raises(InvalidInput, match="gives vocab_size=99"):
        create_run(config, vocab)


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


def test_a_vit_model_loads_as_an_image_tower_with_transformers_outputs(tmp_path):
    from vlpjax.models.vlp import build_image_encoder
    from vlpjax.train.hf_init import read_source, source_weights

    config = transformers.ViTConfig(image_size=32, patch_size=16, **hf_tiny.TOWER)
    torch.manual_seed(0)
    reference = transformers.ViTModel(config, add_pooling_layer=False).eval()
    reference.save_pretrained(tmp_path)
    source = read_source("image", str(tmp_path))
    vit = build_image_encoder(source.spec, rngs=nnx.Rngs(0))
    for name, value in source_weights(source).items():
        node = vit
        for part in name.split("/")[1:]:
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        node[...] = value
    images, _, _ = hf_tiny.inputs()
    with torch.no_grad():
        want = reference(pixel_values=torch.tensor(images.transpose(0, 3, 1, 2))).last_hidden_state.numpy()
    got = vit(images)
    assert np.max(np.abs(np.asarray(got.tokens) - want)) <= 1e-4
    assert np.max(np.abs(np.asarray(got.pooled) - want[:, 0])) <= 1e-4


def test_init_hf_model_loads_a_whole_clip_into_clip_shapes(tiny_shapes_dir, tmp_path):
    from vlpjax.interop.hf_clip import dual_encoder_spec, dual_encoder_table, read_hf
    from vlpjax.models.vit import PIXEL_STATS

    data = load_data(_config("clip_shapes", tiny_shapes_dir))
    sep = data.tokenizer.sep_id
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, hidden_act="gelu")
    clip = transformers.CLIPConfig(
        text_config=dict(vocab_size=data.tokenizer.vocab_size, max_position_embeddings=32, eos_token_id=sep, **tower),
        vision_config=dict(image_size=32, patch_size=16, layer_norm_eps=1e-6, **tower),
        projection_dim=32,
    )
    torch.manual_seed(0)
    transformers.CLIPModel(clip).save_pretrained(tmp_path)
    config = _config("clip_shapes", tiny_shapes_dir, f"--config.init.hf.model={tmp_path}")
    run = create_run(config, data.tokenizer.vocab_size, sep_id=sep)
    assert config.model.image.pixel_mean != PIXEL_STATS  # CLIP's normalisation came with the weights
    hf, family, _, where = read_hf(str(tmp_path))
    table = dual_encoder_table(family, dual_encoder_spec(hf, family, where))
    pairs = weights_from_table(read_safetensors(str(tmp_path)), table, str(tmp_path))
    assert len(pairs) == len(_parameters(run))  # every parameter of the model came from the checkpoint
    _assert_loaded(run, pairs, ())


def test_an_exported_clip_shapes_model_loads_back_with_init_hf_model(tiny_shapes_dir, tmp_path):
    """clip_shapes pools the last real token, its export the [SEP] as EOS: the same rule."""
    from vlpjax.interop.hf_clip import save_dual_encoder
    from vlpjax.train.build import build_model

    config = _config("clip_shapes", tiny_shapes_dir)
    data = load_data(config)
    model = build_model(config.model, data.tokenizer.vocab_size, seed=5)
    save_dual_encoder(model, str(tmp_path), special={"eos_token_id": data.tokenizer.sep_id})
    config = _config("clip_shapes", tiny_shapes_dir, f"--config.init.hf.model={tmp_path}")
    run = create_run(config, data.tokenizer.vocab_size, sep_id=data.tokenizer.sep_id)
    loaded = _parameters(run)
    for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        np.testing.assert_array_equal(loaded["/".join(map(str, path))], np.asarray(value[...]))


def test_kind_hf_from_the_command_line_and_the_errors_it_names(tiny_shapes_dir, tmp_path):
    hf_tiny.tiny_clip_vision(tmp_path / "clip")
    clip = f"--config.init.hf.image={tmp_path / 'clip'}"
    lit = _config("lit_shapes", tiny_shapes_dir, "--config.init.checkpoint=", clip, "--config.model.image.kind=hf")
    assert (lit.model.image.pool, lit.model.image.act, lit.model.image.eps) == ("cls", "gelu", 1e-6)
    with pytest.raises(InvalidInput, match="holds a 'vit' tower, the recipe's is 'regions'"):
        config = _config("uniter_regions", tiny_shapes_dir, clip)
        create_run(config, load_data(config).tokenizer.vocab_size)
    hf_tiny.tiny_bert(tmp_path / "bert", 40)
    with pytest.raises(InvalidInput, match="model.family='decoder_lm' has no text tower"):
        config = _config("lm_shapes", tiny_shapes_dir, f"--config.init.hf.text={tmp_path / 'bert'}")
        create_run(config, 40)
    hf_tiny.tiny_siglip(tmp_path / "siglip")
    siglip = [f"--config.init.hf.model={tmp_path / 'siglip'}", "--config.model.text.kind=hf"]
    with pytest.raises(ValueError, match="has no tokenizer files: set data.tokenizer"):
        _config("siglip_shapes", tiny_shapes_dir, *siglip)
    config = _config("siglip_shapes", tiny_shapes_dir, *siglip, "--config.data.tokenizer=t.json")
    assert config.data.text_len == 16  # SigLIP pads to its full length, unmasked
    assert config.model.text.mask_padding is False and config.model.embed_dim == 32


def test_a_model_config_its_classes_reject_is_a_one_line_error(tiny_shapes_dir):
    config = _config("siglip_shapes", tiny_shapes_dir, "--config.model.image.width=64")
    with pytest.raises(InvalidInput, match="the model config is invalid: projection 'none' needs the tower width 64"):
        create_run(config, 40)
