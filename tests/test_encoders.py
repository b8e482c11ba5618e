"""Encoder behaviour: padding is invisible, pooling variants do what they say, variants decode."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.tiny_models import random_text
from vlpjax.models.layers import MAPHead, sincos_2d
from vlpjax.models.regions import RegionConfig, RegionEncoder, box_geometry
from vlpjax.models.resnet import ResNet, ResNetConfig
from vlpjax.models.text import BertConfig, BertEncoder, TextTransformer, TextTransformerConfig
from vlpjax.models.vit import VIT_WIDTHS, ViT, vit_config

TINY_BERT = BertConfig(
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    max_position_embeddings=16,
)
TINY_CAUSAL = TextTransformerConfig(vocab_size=50, width=16, depth=2, num_heads=2, mlp_dim=24, max_len=16)


def _text_towers():
    return [BertEncoder(TINY_BERT, rngs=nnx.Rngs(0)), TextTransformer(TINY_CAUSAL, rngs=nnx.Rngs(0))]


@pytest.mark.parametrize("tower", _text_towers(), ids=["bert", "causal"])
def test_text_padding_changes_nothing(tower):
    rng = np.random.default_rng(0)
    ids, mask = random_text(rng, 4, length=10, vocab=50)
    base = tower.encode(ids, mask)
    # Different tokens in the padded positions.
    noisy = np.where(mask, ids, rng.integers(1, 50, size=ids.shape))
    assert (noisy != ids).any()
    changed = tower.encode(noisy, mask)
    # More padded positions appended.
    longer_ids = np.concatenate([ids, rng.integers(1, 50, size=(4, 5))], axis=1)
    longer_mask = np.concatenate([mask, np.zeros((4, 5), bool)], axis=1)
    longer = tower.encode(longer_ids, longer_mask)
    # Same shapes: bit-identical. A longer sequence reorders float sums, so: equal to round-off.
    np.testing.assert_array_equal(changed.pooled, base.pooled)
    np.testing.assert_array_equal(np.asarray(changed.tokens)[mask], np.asarray(base.tokens)[mask])
    np.testing.assert_allclose(longer.pooled, base.pooled, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(longer.tokens)[:, :10][mask], np.asarray(base.tokens)[mask], rtol=1e-5, atol=1e-5
    )
    # A real token does change the output, so the check above can fail.
    edited = ids.copy()
    edited[0, 0] = (ids[0, 0] % 49) + 1
    assert not np.allclose(tower.encode(edited, mask).pooled[0], base.pooled[0])


def test_causal_tower_is_causal_and_pools_the_last_real_token():
    tower = TextTransformer(TINY_CAUSAL, rngs=nnx.Rngs(1))
    ids = np.array([[5, 6, 7, 8, 9, 0]], np.int32)
    mask = np.array([[1, 1, 1, 1, 1, 0]], bool)
    base = tower.encode(ids, mask)
    np.testing.assert_array_equal(base.pooled, base.tokens[:, 4])
    later = ids.copy()
    later[0, 3] = 20
    changed = tower.encode(later, mask)
    np.testing.assert_array_equal(changed.tokens[:, :3], base.tokens[:, :3])
    assert not np.allclose(changed.tokens[:, 3], base.tokens[:, 3])


def test_bert_pools_cls():
    tower = BertEncoder(TINY_BERT, rngs=nnx.Rngs(0))
    ids, mask = random_text(np.random.default_rng(2), 3, length=8, vocab=50)
    out = tower.encode(ids, mask)
    np.testing.assert_array_equal(out.pooled, out.tokens[:, 0])


def _regions(rng, b, r, f):
    feats = rng.normal(size=(b, r, f)).astype(np.float32)
    xy = rng.uniform(0, 0.5, size=(b, r, 2))
    wh = rng.uniform(0.1, 0.5, size=(b, r, 2))
    boxes = np.concatenate([xy, xy + wh], axis=-1).astype(np.float32)
    return feats, boxes


@pytest.mark.parametrize("depth", [0, 2])
def test_region_padding_changes_nothing(depth):
    enc = RegionEncoder(RegionConfig(feature_dim=12, width=16, depth=depth, num_heads=2, mlp_dim=24), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    feats, boxes = _regions(rng, 3, 6, 12)
    mask = np.array([[1] * 6, [1] * 3 + [0] * 3, [1] + [0] * 5], bool)
    base = enc(feats, boxes, mask)
    feats2, boxes2 = _regions(rng, 3, 6, 12)
    feats2 = np.where(mask[..., None], feats, feats2)
    boxes2 = np.where(mask[..., None], boxes, boxes2)
    changed = enc(feats2, boxes2, mask)
    np.testing.assert_array_equal(changed.pooled, base.pooled)
    np.testing.assert_array_equal(np.asarray(changed.tokens)[mask], np.asarray(base.tokens)[mask])
    padded = enc(
        np.pad(feats, ((0, 0), (0, 2), (0, 0)), constant_values=3.0),
        np.pad(boxes, ((0, 0), (0, 2), (0, 0))),
        np.pad(mask, ((0, 0), (0, 2))),
    )
    np.testing.assert_allclose(padded.pooled, base.pooled, rtol=1e-6, atol=1e-6)
    # Pooling is the mean of the real region tokens.
    np.testing.assert_allclose(base.pooled[1], np.asarray(base.tokens)[1, :3].mean(0), rtol=1e-5, atol=1e-6)


def test_box_geometry_is_uniter_seven_d():
    g = np.asarray(box_geometry(jnp.array([[0.1, 0.2, 0.5, 0.6]])))
    np.testing.assert_allclose(g, [[0.1, 0.2, 0.5, 0.6, 0.4, 0.4, 0.16]], rtol=1e-6)


def test_vit_variants_decode():
    for name, (width, depth, mlp, heads) in VIT_WIDTHS.items():
        c = vit_config(f"{name}/16")
        assert (c.width, c.depth, c.mlp_dim, c.num_heads, c.patch) == (width, depth, mlp, heads, 16)
    c = vit_config("L/14", depth=2, image_size=28)
    assert (c.width, c.depth, c.patch, c.grid) == (1024, 2, 14, 2)
    assert vit_config("B/32").patch == 32
    custom = vit_config("x/8", width=64, depth=2, mlp_dim=128, num_heads=4)
    assert (custom.width, custom.patch) == (64, 8)
    with pytest.raises(ValueError, match="mlp_dim"):
        vit_config("x/8", width=64, depth=2, num_heads=4)
    with pytest.raises(ValueError, match="look like"):
        vit_config("B16")
    with pytest.raises(ValueError, match="pool"):
        vit_config("Ti/16", pool="max")


def _tiny_vit(pool, posemb="learn"):
    return ViT(
        vit_config("t/4", width=16, depth=1, mlp_dim=32, num_heads=2, image_size=8, pool=pool, posemb=posemb),
        rngs=nnx.Rngs(0),
    )


@pytest.mark.parametrize("posemb", ["learn", "sincos2d"])
def test_vit_pooling_variants(posemb):
    image = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    run = nnx.jit(lambda m, x: m(x))
    cls = run(_tiny_vit("cls", posemb), image)
    assert cls.tokens.shape == (2, 5, 16)  # 4 patches + cls
    np.testing.assert_array_equal(cls.pooled, cls.tokens[:, 0])
    gap = run(_tiny_vit("gap", posemb), image)
    assert gap.tokens.shape == (2, 4, 16)
    np.testing.assert_allclose(gap.pooled, np.asarray(gap.tokens).mean(1), rtol=1e-6)
    mapped = run(_tiny_vit("map", posemb), image)
    assert mapped.pooled.shape == (2, 16)


def test_vit_learned_posemb_rejects_other_resolutions():
    with pytest.raises(ValueError, match="8px"):
        _tiny_vit("gap")(np.zeros((1, 12, 12, 3), np.float32))
    # sincos embeddings are computed for whatever grid arrives.
    assert _tiny_vit("gap", "sincos2d")(np.zeros((1, 12, 12, 3), np.float32)).tokens.shape == (1, 9, 16)


def test_sincos_2d_shape_and_range():
    emb = sincos_2d(3, 4, 16)
    assert emb.shape == (12, 16) and np.all(np.abs(emb) <= 1.0)
    assert len({tuple(r) for r in np.round(emb, 6)}) == 12  # every position is distinct


def test_map_head_is_permutation_invariant_and_respects_mask():
    head = MAPHead(16, 2, 32, rngs=nnx.Rngs(0))
    tokens = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32)
    base = head(tokens)
    np.testing.assert_allclose(head(tokens[:, ::-1]), base, rtol=1e-5, atol=1e-6)
    mask = np.array([[1, 1, 1, 0, 0]] * 2, bool)
    masked = head(tokens, mask)
    noisy = tokens.copy()
    noisy[:, 3:] = 7.0
    np.testing.assert_array_equal(head(noisy, mask), masked)
    np.testing.assert_allclose(masked, head(tokens[:, :3]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout,expansion", [("18", 1), ("50", 4)])
def test_resnet_grid_tokens_and_pooled(layout, expansion):
    enc = ResNet(ResNetConfig(layout=layout, width=8, groups=4), rngs=nnx.Rngs(0))
    image = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    out = nnx.jit(lambda m, x: m(x))(enc, image)  # jit: eager convs are slow on CPU
    # Stride 32 overall: a 64px image gives a 2x2 grid of width*8*expansion channels.
    assert out.tokens.shape == (2, 4, 8 * 8 * expansion) == (2, 4, enc.out_dim)
    np.testing.assert_allclose(out.pooled, np.asarray(out.tokens).mean(1), rtol=1e-5, atol=1e-6)
    assert np.isfinite(np.asarray(out.tokens)).all()
    with pytest.raises(ValueError, match="layout"):
        ResNetConfig(layout="20")
