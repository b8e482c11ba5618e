"""ITM re-ranking of the ITC top k, and region features pooled from known boxes."""
import numpy as np

from vlpjax.data.regions import flip_boxes, pooled_box, region_arrays
from vlpjax.evaluate.retrieval import recall_at_k, reranked_similarity


def test_reranking_reorders_the_top_k_only():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(50, 50))
    targets = np.arange(50)
    oracle = lambda q, c: (q == c).astype(float)  # a perfect matcher
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
