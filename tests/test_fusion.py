"""Fusion encoders: padding is invisible, streams interact, the ALBEF split composes."""

import numpy as np
import pytest
from flax import nnx

from tests.tiny_models import random_text
from vlpjax.models.fusion import CoAttentionFusion, FusionConfig, MergedAttentionFusion
from vlpjax.models.text import BertConfig, BertEncoder

CONFIG = FusionConfig(width=16, depth=2, num_heads=2, mlp_dim=24, text_dim=12, image_dim=20)
FUSIONS = {"merged": MergedAttentionFusion, "co_attention": CoAttentionFusion}


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(3, 6, 12)).astype(np.float32)
    image = rng.normal(size=(3, 5, 20)).astype(np.float32)
    text_mask = np.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4], bool)
    image_mask = np.array([[1] * 5, [1] * 3 + [0] * 2, [1] + [0] * 4], bool)
    return text, text_mask, image, image_mask, rng


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_fusion_ignores_padding_in_both_streams(kind):
    fusion = FUSIONS[kind](CONFIG, rngs=nnx.Rngs(0))
    text, text_mask, image, image_mask, rng = _inputs()
    base = fusion(text, text_mask, image, image_mask)
    noisy_text = np.where(text_mask[..., None], text, rng.normal(size=text.shape) * 5).astype(np.float32)
    noisy_image = np.where(image_mask[..., None], image, rng.normal(size=image.shape) * 5).astype(np.float32)
    other = fusion(noisy_text, text_mask, noisy_image, image_mask)
    np.testing.assert_array_equal(np.asarray(other.text)[text_mask], np.asarray(base.text)[text_mask])
    np.testing.assert_array_equal(np.asarray(other.image)[image_mask], np.asarray(base.image)[image_mask])
    np.testing.assert_array_equal(other.pooled, base.pooled)
    assert base.text.shape == (3, 6, 16) and base.image.shape == (3, 5, 16)


@pytest.mark.parametrize("kind", sorted(FUSIONS))
def test_text_output_depends_on_the_image(kind):
    fusion = FUSIONS[kind](CONFIG, rngs=nnx.Rngs(0))
    text, text_mask, image, image_mask, rng = _inputs()
    base = fusion(text, text_mask, image, image_mask)
    changed = fusion(text, text_mask, image + 1.0, image_mask)
    assert not np.allclose(changed.pooled, base.pooled)


def test_merged_attention_tells_modalities_apart_by_type_embedding():
    fusion = MergedAttentionFusion(FusionConfig(width=16, depth=1, num_heads=2, mlp_dim=24), rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(1, 4, 16)).astype(np.float32)
    ones = np.ones((1, 4), bool)
    out = fusion(x, ones, x, ones)
    assert not np.allclose(out.text, out.image)  # same inputs, different modality


def test_albef_text_then_fusion_layers_compose_to_the_full_encoder():
    config = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=16,
        cross_attention_from=1,
        context_dim=20,
    )
    bert = BertEncoder(config, rngs=nnx.Rngs(0))
    assert not bert.layers[0].has_cross and bert.layers[1].has_cross and bert.layers[2].has_cross
    rng = np.random.default_rng(0)
    ids, mask = random_text(rng, 2, length=8, vocab=40)
    image = rng.normal(size=(2, 5, 20)).astype(np.float32)
    image_mask = np.ones((2, 5), bool)
    text_only = bert.text_layers(ids, mask)
    fused = bert.fusion_layers(text_only, mask, image, image_mask)
    full = bert(ids, mask, context=image, context_mask=image_mask)
    np.testing.assert_allclose(fused, full, rtol=1e-6, atol=1e-6)
    # The unimodal text encoding does not see the image.
    np.testing.assert_array_equal(bert.encode(ids, mask).tokens, text_only)
    assert not np.allclose(bert.fusion_layers(text_only, mask, image + 1, image_mask), fused)


def test_cross_attention_layers_refuse_to_run_without_context():
    config = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=16,
        cross_attention_from=1,
        context_dim=20,
    )
    bert = BertEncoder(config, rngs=nnx.Rngs(0))
    ids, mask = random_text(np.random.default_rng(0), 2, length=8, vocab=40)
    with pytest.raises(ValueError, match="context"):
        bert(ids, mask)


def test_fusion_posemb_gives_the_fusion_each_patch_position_again():
    from tests.tiny_models import IMAGE_SIZE, TINY_VIT
    from vlpjax.models.fusion_vlp import build_fusion_vlp
    from vlpjax.models.layers import sincos_2d

    spec = {
        "image": {**TINY_VIT, "pool": "gap"},
        "text": {
            "vocab_size": 30,
            "hidden_size": 16,
            "num_hidden_layers": 2,
            "cross_attention_from": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "max_position_embeddings": 8,
        },
        "embed_dim": 8,
    }
    plain = build_fusion_vlp(spec, rngs=nnx.Rngs(0))
    with_positions = build_fusion_vlp({**spec, "fusion_posemb": True}, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    image = plain.encode_image({"image": rng.normal(size=(2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)})
    ids, mask = random_text(rng, 2, length=8, vocab=30)
    text = plain.encode_text(ids, mask)
    grid = IMAGE_SIZE // 4
    shifted = image._replace(tokens=image.tokens + sincos_2d(grid, grid, image.tokens.shape[-1]))
    np.testing.assert_allclose(
        np.asarray(with_positions.fuse(text, image).pooled), np.asarray(plain.fuse(text, shifted).pooled), atol=1e-6
    )
    assert (
        np.abs(np.asarray(with_positions.fuse(text, image).pooled) - np.asarray(plain.fuse(text, image).pooled)).max()
        > 1e-3
    )
    with pytest.raises(ValueError, match="fusion_posemb"):
        build_fusion_vlp({**spec, "image": {**TINY_VIT, "pool": "cls"}, "fusion_posemb": True}, rngs=nnx.Rngs(0))
