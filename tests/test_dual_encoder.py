"""DualEncoder: any image encoder with any text tower; temperature and bias as the papers set them."""

import math

import numpy as np
import pytest
from flax import nnx

from tests.tiny_models import TINY_CAUSAL, TINY_VIT, VOCAB, random_text, tiny_dual_encoder
from vlpjax.models.vlp import MAX_LOGIT_SCALE, build_dual_encoder

TINY_BERT = {
    "kind": "bert",
    "vocab_size": VOCAB,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 24,
    "max_position_embeddings": 16,
}
TINY_RESNET = {"kind": "resnet", "layout": "18", "width": 4, "groups": 2}
TINY_REGIONS = {"kind": "regions", "feature_dim": 10, "width": 16, "depth": 1, "num_heads": 2, "mlp_dim": 24}


def test_softmax_temperature_starts_at_1_over_0_07_and_is_clamped_at_100():
    model = tiny_dual_encoder("softmax")
    assert float(model.logit_scale[...]) == pytest.approx(math.log(1 / 0.07))
    assert float(model.scale()) == pytest.approx(1 / 0.07, rel=1e-5)
    model.logit_scale[...] = np.float32(math.log(1000.0))
    assert float(model.scale()) == pytest.approx(MAX_LOGIT_SCALE, rel=1e-5)
    assert model.bias() is None


def test_sigmoid_starts_at_log10_and_minus10():
    model = tiny_dual_encoder("sigmoid")
    assert float(model.logit_scale[...]) == pytest.approx(math.log(10.0))
    assert float(model.scale()) == pytest.approx(10.0, rel=1e-5)
    assert float(model.bias()) == -10.0
    # No clamp for sigmoid.
    model.logit_scale[...] = np.float32(math.log(1000.0))
    assert float(model.scale()) == pytest.approx(1000.0, rel=1e-4)


@pytest.mark.parametrize("image", [TINY_VIT, TINY_RESNET, TINY_REGIONS], ids=["vit", "resnet", "regions"])
@pytest.mark.parametrize("text", [TINY_CAUSAL, TINY_BERT], ids=["causal", "bert"])
def test_any_image_encoder_with_any_text_tower(image, text):
    model = build_dual_encoder({"image": image, "text": text, "embed_dim": 12}, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    ids, mask = random_text(rng, 3)
    batch = {"text_ids": ids, "text_mask": mask}
    if image["kind"] == "regions":
        batch |= {
            "regions": rng.normal(size=(3, 5, 10)).astype(np.float32),
            "boxes": np.tile([0.1, 0.1, 0.6, 0.7], (3, 5, 1)).astype(np.float32),
            "region_mask": np.ones((3, 5), bool),
        }
    else:
        size = 32 if image["kind"] == "resnet" else 8
        batch["image"] = rng.normal(size=(3, size, size, 3)).astype(np.float32)
    out = nnx.jit(lambda m, b: m(b))(model, batch)
    for key in ("img_emb", "txt_emb"):
        assert out[key].shape == (3, 12)
        np.testing.assert_allclose(np.linalg.norm(out[key], axis=1), 1.0, rtol=1e-5)


def test_unknown_kinds_are_named():
    with pytest.raises(ValueError, match="'transformer'"):
        build_dual_encoder({"image": {"kind": "transformer"}, "text": TINY_CAUSAL}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="contrastive"):
        build_dual_encoder({"image": TINY_VIT, "text": TINY_CAUSAL, "contrastive": "hinge"}, rngs=nnx.Rngs(0))
