"""CLIP and SigLIP from Hugging Face directories: tiny random transformers models, saved with
save_pretrained, give the same embeddings and logits in vlpjax."""

import json
import math

import numpy as np
import pytest

from tests import hf_tiny
from vlpjax.errors import InvalidInput
from vlpjax.interop.hf import load_dual_encoder

TOL = 1e-4


def _assert_same_outputs(reference, model, **input_args):
    images, ids, mask = hf_tiny.inputs(**input_args)
    pixels = (model.img.config.pixel_mean, model.img.config.pixel_std)
    use_mask = model.txt.config.mask_padding
    want = hf_tiny.hf_outputs(reference, images, ids, mask, pixels, use_mask)
    got = hf_tiny.vlpjax_outputs(model, images, ids, mask)
    for name, w, g in zip(("image embeddings", "text embeddings", "logits"), want, got, strict=True):
        assert np.max(np.abs(w - g)) <= TOL, (name, np.max(np.abs(w - g)))


@pytest.mark.parametrize("shard", [None, "40KB"], ids=["single", "sharded"])
def test_clip_import_matches_transformers(tmp_path, shard):
    reference = hf_tiny.tiny_clip(tmp_path, max_shard_size=shard)
    if shard:
        assert (tmp_path / "model.safetensors.index.json").exists()
    model = load_dual_encoder(str(tmp_path))
    assert model.txt.config.pool == "eos" and model.img.config.ln_pre
    _assert_same_outputs(reference, model)


def test_clip_with_the_old_eos_rule_pools_the_largest_id(tmp_path):
    """transformers reads eos_token_id=2 as 'the largest id is the EOS' (old CLIP configs)."""
    reference = hf_tiny.tiny_clip(tmp_path, eos_token_id=2)
    model = load_dual_encoder(str(tmp_path))
    assert model.txt.config.pool == "argmax"
    _assert_same_outputs(reference, model, eos=hf_tiny.VOCAB - 1)


@pytest.mark.parametrize("shard", [None, "40KB"], ids=["single", "sharded"])
def test_siglip_import_matches_transformers(tmp_path, shard):
    reference = hf_tiny.tiny_siglip(tmp_path, max_shard_size=shard)
    model = load_dual_encoder(str(tmp_path))
    assert model.contrastive == "sigmoid" and model.img_proj.kind == "none"
    _assert_same_outputs(reference, model)


def test_unrepresentable_configs_and_weights_are_refused(tmp_path):
    hf_tiny.tiny_clip(tmp_path)
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config["vision_config"]["hidden_act"] = "mish"
    config_file.write_text(json.dumps(config))
    with pytest.raises(InvalidInput, match=r"config.json \(vision_config\): hidden_act='mish'"):
        load_dual_encoder(str(tmp_path))
    config["vision_config"]["hidden_act"] = "quick_gelu"
    config["vision_config"]["num_channels"] = 1
    config_file.write_text(json.dumps(config))
    with pytest.raises(InvalidInput, match="num_channels=1"):
        load_dual_encoder(str(tmp_path))


def test_a_clip_scale_above_the_cap_is_refused(tmp_path):
    reference = hf_tiny.tiny_clip()
    import torch

    with torch.no_grad():
        reference.logit_scale.fill_(math.log(200.0))
    reference.save_pretrained(tmp_path)
    with pytest.raises(InvalidInput, match="logit_scale=5.2983 exceeds log"):
        load_dual_encoder(str(tmp_path))


def test_odd_sizes_and_broken_files_are_named(tmp_path):
    hf_tiny.tiny_clip(tmp_path)
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config["vision_config"]["image_size"] = 40  # 40 px do not tile into 16 px patches
    config_file.write_text(json.dumps(config))
    with pytest.raises(InvalidInput, match=r"image_size=40: not a multiple of patch_size=16"):
        load_dual_encoder(str(tmp_path))
    config_file.write_text("{not json")
    with pytest.raises(InvalidInput, match="config.json is not valid JSON"):
        load_dual_encoder(str(tmp_path))
