"""`vlpjax export --format hf`: clip_shapes and siglip_shapes runs become transformers CLIPModel /
SiglipModel directories that compute what vlpjax computes; a fusion run's text encoder becomes a
BertModel. What HF cannot represent is refused before anything is written."""

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

from tests import hf_tiny
from tests.test_recipes import _config
from vlpjax.errors import InvalidInput
from vlpjax.interop.hf import load_dual_encoder, save_dual_encoder
from vlpjax.interop.hf_clip import dual_encoder_config_to_hf
from vlpjax.interop.hf_fusion import fusion_tensors
from vlpjax.interop.safetensors_io import save_hf_directory
from vlpjax.models.fusion_vlp import build_fusion_vlp
from vlpjax.models.vlp import build_dual_encoder
from vlpjax.train.export import export_run
from vlpjax.train.loop import train
from vlpjax.train.restore import trained_model

HF_CLASSES = {"clip_shapes": transformers.CLIPModel, "siglip_shapes": transformers.SiglipModel}


def _batch(data, config, rows=4, seed=0):
    captions = ["a red circle at the top left.", "two blue squares", "a green triangle below a red square.", ""]
    ids, mask = data.tokenizer(captions[:rows], config.data.text_len)
    size = config.data.image_size
    images = np.random.default_rng(seed).uniform(-1, 1, (rows, size, size, 3)).astype(np.float32)
    return images, ids, mask


@pytest.mark.parametrize("recipe", ["clip_shapes", "siglip_shapes"])
def test_exported_run_loads_in_transformers_with_the_same_embeddings(tiny_shapes_dir, tmp_path, recipe):
    config = _config(recipe, tiny_shapes_dir, "--config.train.steps=2", "--config.train.checkpoint_every=2")
    workdir, out = str(tmp_path / "run"), str(tmp_path / "hf")
    train(config, workdir)
    export_run(config, workdir, out, "hf")
    written = {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    }
    assert written <= set(os.listdir(out))

    model, data = trained_model(config, workdir)
    images, ids, mask = _batch(data, config)
    reference = HF_CLASSES[recipe].from_pretrained(out).eval()
    want = hf_tiny.hf_outputs(reference, images, ids.astype(np.int64), mask.astype(np.int64))
    got = hf_tiny.vlpjax_outputs(model, images, ids, mask)
    for name, w, g in zip(("image embeddings", "text embeddings", "logits"), want, got, strict=True):
        assert np.max(np.abs(w - g)) <= 1e-4, (name, np.max(np.abs(w - g)))

    # AutoTokenizer reads the run's tokenizer (not CLIP's own), with the run's ids and padding.
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    long_caption = " ".join(["a red circle at the top left"] * 10)  # truncated: keeps its [SEP]
    texts = ["a red circle at the top left.", long_caption]
    hf_ids = tokenizer(texts, padding="max_length", max_length=config.data.text_len, truncation=True)
    ours = data.tokenizer(texts, config.data.text_len)
    np.testing.assert_array_equal(np.asarray(hf_ids["input_ids"]), ours[0])
    np.testing.assert_array_equal(np.asarray(hf_ids["attention_mask"]).astype(bool), ours[1])

    # Import, then export again: the same tensors, bit for bit.
    again = str(tmp_path / "again")
    special = {"eos_token_id": data.tokenizer.sep_id, "pad_token_id": data.tokenizer.pad_id}
    save_dual_encoder(load_dual_encoder(out), again, special=special)
    first, second = (
        load_file(os.path.join(out, "model.safetensors")),
        load_file(os.path.join(again, "model.safetensors")),
    )
    assert sorted(first) == sorted(second)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def _dual_encoder(**image):
    spec = dict(
        image=dict(kind="vit", variant="x/16", width=32, depth=1, mlp_dim=64, num_heads=2, image_size=32, **image),
        text=dict(kind="causal", vocab_size=50, width=32, depth=1, num_heads=2, mlp_dim=64, max_len=16),
        embed_dim=32,
    )
    return build_dual_encoder(spec, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "image,field",
    [(dict(pool="gap", ln_pre=True), "model.image.pool"), (dict(pool="cls", ln_pre=False), "model.image.ln_pre")],
)
def test_what_clip_cannot_represent_is_refused_naming_the_field(image, field):
    with pytest.raises(InvalidInput, match=f"cannot export to Hugging Face exactly: {field}"):
        dual_encoder_config_to_hf(_dual_encoder(**image), {"eos_token_id": 3})


def test_folds_are_exact(tmp_path):
    """sin-cos positions, a patch bias, a class token without a position of its own: folded into
    CLIP's position table; transformers computes the same embeddings."""
    model = _dual_encoder(pool="cls", ln_pre=True, posemb="sincos2d")
    model.img.patch_embed.bias[...] = np.random.default_rng(1).normal(size=32).astype(np.float32)
    save_dual_encoder(model, str(tmp_path), special={"eos_token_id": hf_tiny.EOS})
    reference = transformers.CLIPModel.from_pretrained(str(tmp_path)).eval()
    images, ids, mask = hf_tiny.inputs(length=10, token_after_eos=False)  # the tower pools the last real token
    want = hf_tiny.hf_outputs(reference, images, ids, mask)
    got = hf_tiny.vlpjax_outputs(model, images, ids, mask)
    for w, g in zip(want, got, strict=True):
        assert np.max(np.abs(w - g)) <= 1e-4


def test_fusion_text_encoder_exports_as_a_bert_model(tmp_path):
    spec = dict(
        image=dict(kind="vit", variant="x/16", width=32, depth=1, mlp_dim=64, num_heads=2, image_size=32, pool="gap"),
        text=dict(kind="bert", vocab_size=50, hidden_size=32, num_hidden_layers=3, cross_attention_from=2,
                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=16),
        fusion=dict(layout="albef"),
        embed_dim=32,
    )  # fmt: skip
    model = build_fusion_vlp(spec, rngs=nnx.Rngs(0))
    config, bert, rest, name_map = fusion_tensors(model)
    save_hf_directory(str(tmp_path), config, bert)
    reference = transformers.BertModel.from_pretrained(str(tmp_path), add_pooling_layer=False).eval()
    _, ids, mask = hf_tiny.inputs(length=10)
    with torch.no_grad():
        want = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    got = np.asarray(model.txt.text_layers(ids, mask))
    real = mask.astype(bool)
    assert np.max(np.abs(want[real] - got[real])) <= 1e-4
    # Everything else is in the rest file, named by path; nothing is in both.
    assert "txt/layers/2/cross/query/kernel" in rest and "itm_head/linear/kernel" in rest
    assert not set(name_map["model.safetensors"].values()) & set(rest)


def test_a_refused_export_writes_nothing(tmp_path, monkeypatch):
    """The refusal comes before the staging directory: neither --out nor a staging dir appears."""
    from tests.test_recipes import ROOT
    from vlpjax.config import load_config
    from vlpjax.train import export

    class Data:
        tokenizer = SimpleNamespace(cls_id=0, sep_id=3, pad_id=1)

    monkeypatch.setattr(export, "trained_model", lambda config, workdir: (_dual_encoder(pool="gap"), Data()))
    config = load_config(os.path.join(ROOT, "configs", "clip_shapes.py:tiny"))
    out = tmp_path / "out"
    with pytest.raises(InvalidInput, match="model.image.pool"):
        export.export_run(config, str(tmp_path / "run"), str(out), "hf")
    assert os.listdir(tmp_path) == []
