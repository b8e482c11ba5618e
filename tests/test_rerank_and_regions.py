"""ITM re-ranking of the ITC top k, and region features pooled from known boxes."""

import numpy as np

from vlpjax.data.regions import flip_boxes, pooled_box, region_arrays
from vlpjax.evaluate.retrieval import recall_at_k, reranked_similarity


def test_reranking_reorders_the_top_k_only():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(50, 50))
    targets = np.arange(50)

    def oracle(q, c):  # a perfect matcher
        return (q == c).astype(float)

    for k in (1, 5, 20):
        reranked = reranked_similarity(sim, oracle, k)
        before, after = recall_at_k(sim, targets, ks=(1, k, 50)), recall_at_k(reranked, targets, ks=(1, k, 50))
        assert after[1] == before[k]  # every target inside the top k moves to rank 1
        assert after[k] == before[k] and after[50] == 1.0  # nothing enters or leaves the top k
        outside = np.argsort(-sim, axis=1)[:, k:]
        for q in range(5):  # the rest keep their ITC order
            assert np.all(np.diff(reranked[q, outside[q]]) <= 0)


def test_pooled_box_reads_the_pixels_inside_the_box():
    image = np.zeros((32, 32, 3), np.float32)
    image[8:16, 16:32] = [1.0, 0.5, -1.0]
    feature = pooled_box(image, np.array([0.5, 0.25, 1.0, 0.5]), grid=2)
    np.testing.assert_allclose(feature.reshape(4, 3), np.tile([1.0, 0.5, -1.0], (4, 1)))
    half = pooled_box(image, np.array([0.25, 0.25, 0.75, 0.5]), grid=2).reshape(2, 2, 3)
    np.testing.assert_allclose(half[:, 0], 0.0)  # the box's left half lies outside the patch
    np.testing.assert_allclose(half[:, 1], [[1.0, 0.5, -1.0]] * 2)


def test_flipped_image_with_flipped_boxes_gives_mirrored_features():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(24, 24, 3)).astype(np.float32)
    boxes = np.array([[0.125, 0.25, 0.5, 0.75], [0.5, 0.0, 1.0, 0.5]], np.float32)
    plain = region_arrays(image, boxes, grid=3, max_regions=3)
    flipped = region_arrays(image[:, ::-1], flip_boxes(boxes), grid=3, max_regions=3)
    assert plain["region_mask"].tolist() == [True, True, False]
    mirrored = plain["regions"].reshape(3, 3, 3, 3)[:, :, ::-1].reshape(3, -1)
    np.testing.assert_allclose(flipped["regions"], mirrored, atol=1e-6)


def test_cached_tower_tokens_give_the_same_match_scores_as_encoding_each_pair():
    import jax
    from flax import nnx
    from jax.sharding import Mesh

    from tests.tiny_models import IMAGE_SIZE, TINY_VIT, random_text
    from vlpjax.evaluate.inference import Inference
    from vlpjax.models.fusion_vlp import build_fusion_vlp

    text = {
        "vocab_size": 30,
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "cross_attention_from": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 8,
    }
    model = build_fusion_vlp(
        {"image": {**TINY_VIT, "pool": "gap"}, "text": text, "embed_dim": 8, "fusion_posemb": True}, rngs=nnx.Rngs(0)
    )
    rng = np.random.default_rng(0)
    images = {"image": rng.normal(size=(3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)}
    ids, mask = random_text(rng, 4, length=8, vocab=30)
    text_rows, image_rows = np.array([0, 1, 2, 3, 3, 0]), np.array([2, 0, 1, 1, 2, 0])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    inference = Inference(graphdef, params, rest, Mesh(np.array(jax.devices()[:1]), ("data",)), batch_size=4)
    cached = inference.match_logits(
        inference.image_tokens(images), image_rows, inference.text_tokens(ids, mask), text_rows
    )
    direct = model.itm_logits(
        model.encode_text(ids[text_rows], mask[text_rows]), model.encode_image({"image": images["image"][image_rows]})
    )
    np.testing.assert_allclose(cached, np.asarray(direct[:, 1] - direct[:, 0]), atol=1e-5)
    assert len(set(np.round(cached, 5))) > 3  # the pairs differ, so a constant score would fail
