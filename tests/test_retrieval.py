"""Retrieval and zero-shot scoring must never reward a broken model: ties count as chance, a
non-finite score ranks last, and a NaN target is a miss."""

import numpy as np
import pytest

from vlpjax.evaluate.report import top_k_order, top_k_png
from vlpjax.evaluate.retrieval import (
    recall_at_k,
    recall_at_k_sets,
    reranked_retrieval_metrics,
    reranked_similarity,
    retrieval_metrics,
)
from vlpjax.evaluate.zero_shot import zero_shot_accuracy

N = 20


def test_recall_counts_strictly_better_candidates_and_hand_checked_ranks():
    sim = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.4, 0.6, 0.7]])
    # Target ranks: 0 (best), 1 (0.8 beats 0.3), 0 (0.7 is the row's best).
    assert recall_at_k(sim, np.arange(3), ks=(1, 2, 3)) == {1: 2 / 3, 2: 1.0, 3: 1.0}


def test_constant_embeddings_score_chance_exactly():
    emb = np.ones((N, 8), np.float32)
    metrics = retrieval_metrics(emb, emb)
    for direction in ("t2i", "i2t"):
        for k in (1, 5, 10):
            assert metrics[f"retrieval/{direction}_r{k}"] == pytest.approx(k / N)


def test_a_tie_with_one_other_candidate_is_half_a_hit_at_one():
    sim = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert recall_at_k(sim, np.arange(3), ks=(1, 2)) == {1: pytest.approx((0.5 + 1 + 1) / 3), 2: 1.0}


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_embeddings_score_zero(bad):
    emb = np.full((N, 8), bad, np.float32)
    assert all(v == 0.0 for v in retrieval_metrics(emb, emb).values())


def test_a_nan_target_is_a_miss_and_nan_candidates_rank_last():
    sim = np.array([[np.nan, 0.5, 0.2], [np.nan, 0.1, 0.3], [0.3, np.nan, 0.1]])
    # Query 0: its target is NaN, a miss at every k. Query 1: its target is beaten by 0.3 only (the
    # NaN ranks last). Query 2: beaten by 0.3; the NaN does not count against nor for it.
    assert recall_at_k(sim, np.arange(3), ks=(1, 2, 3)) == {1: 0.0, 2: pytest.approx(2 / 3), 3: pytest.approx(2 / 3)}


def test_one_nan_embedding_only_costs_its_own_queries():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(N, 16)).astype(np.float32)
    txt = img + 0.01 * rng.normal(size=img.shape).astype(np.float32)
    img[3] = np.nan
    metrics = retrieval_metrics(img, txt)
    assert metrics["retrieval/t2i_r1"] == metrics["retrieval/i2t_r1"] == pytest.approx((N - 1) / N)


def _nan_scores(t, i):
    return np.full(len(t), np.nan)


def _oracle(t, i):
    return (np.asarray(t) == np.asarray(i)).astype(float)


@pytest.mark.parametrize("itm", [_nan_scores, _oracle, lambda t, i: np.zeros(len(t))])
def test_reranking_nan_embeddings_scores_zero(itm):
    emb = np.full((N, 8), np.nan, np.float32)
    assert all(v == 0.0 for v in reranked_retrieval_metrics(emb, emb, itm, top_k=5).values())


def test_reranking_with_a_nan_matcher_scores_zero_and_a_constant_one_chance():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(N, 16)).astype(np.float32)  # a perfect ITC
    assert all(v == 0.0 for v in reranked_retrieval_metrics(emb, emb, _nan_scores, top_k=5).values())
    constant = reranked_retrieval_metrics(emb, emb, lambda t, i: np.zeros(len(t)), top_k=5)
    # The target is one of 5 tied re-ranked candidates: chance within the top 5, a hit at 5 and 10.
    assert constant["retrieval/itm_t2i_r1"] == pytest.approx(1 / 5)
    assert constant["retrieval/itm_t2i_r5"] == constant["retrieval/itm_t2i_r10"] == 1.0


def test_constant_embeddings_and_matcher_rerank_to_chance():
    emb = np.ones((N, 8), np.float32)
    metrics = reranked_retrieval_metrics(emb, emb, lambda t, i: np.zeros(len(t)), top_k=5)
    for k in (1, 5, 10):
        assert metrics[f"retrieval/itm_t2i_r{k}"] == pytest.approx(k / N)


def test_one_nan_similarity_does_not_poison_the_reranking_of_other_queries():
    rng = np.random.default_rng(1)
    sim = rng.normal(size=(N, N))
    sim[0, 5] = np.nan
    reranked = reranked_similarity(sim, _oracle, top_k=3)
    assert np.isfinite(reranked[1:]).all()
    before = recall_at_k(np.where(np.isnan(sim), -np.inf, sim), np.arange(N), ks=(3,))[3]
    assert recall_at_k(reranked, np.arange(N), ks=(1,))[1] == before


def test_zero_shot_nan_and_constant_embeddings_score_no_better_than_chance():
    labels = np.zeros(30, int)  # every image is class 0, the class argmax picks on a tie or a NaN
    classes = np.eye(3, dtype=np.float32)
    assert zero_shot_accuracy(np.full((30, 3), np.nan, np.float32), classes, labels) == 0.0
    assert zero_shot_accuracy(np.ones((30, 3), np.float32), classes, labels) == pytest.approx(1 / 3)
    assert zero_shot_accuracy(np.eye(3, dtype=np.float32)[labels], classes, labels) == 1.0


def test_top_k_png_does_not_show_a_tied_target_first(tmp_path):
    scores = np.array([1.0, 1.0, 1.0, np.nan, 1.0, 1.0, 0.5])
    assert top_k_order(scores, 0, 5).tolist() == [1, 2, 4, 5, 0]  # the target last among its ties
    assert top_k_order(scores, 6, 6).tolist() == [0, 1, 2, 4, 5, 6]  # the NaN last of all
    images = np.zeros((7, 8, 8, 3), np.float32)
    top_k_png(str(tmp_path / "top.png"), ["a caption"], scores[None], images, [0], k=5)
    assert (tmp_path / "top.png").stat().st_size > 0


def test_several_captions_per_image_by_hand():
    """3 images x 2 captions (0, 1 -> image 0; 2, 3 -> 1; 4, 5 -> 2). With identity image
    embeddings the similarity is the caption rows below."""
    sim = np.array(
        [
            [0.9, 0.1, 0.0],  # image 0 first: hit
            [0.2, 0.8, 0.1],  # image 0 second
            [0.1, 0.7, 0.3],  # image 1 first: hit
            [0.6, 0.5, 0.0],  # image 1 second
            [0.0, 0.2, 0.25],  # image 2 first: hit
            [0.3, 0.1, 0.35],  # image 2 first: hit
        ]
    )
    metrics = retrieval_metrics(np.eye(3), sim, caption_image=np.array([0, 0, 1, 1, 2, 2]))
    # t2i: every caption ranks the 3 images; 4 of 6 find theirs first, all within 5.
    assert metrics["retrieval/t2i_r1"] == pytest.approx(4 / 6) and metrics["retrieval/t2i_r5"] == 1.0
    # i2t: image 0's column is led by its t0 (0.9); image 1's by t1 (0.8, image 0's) with its own
    # t2 second; image 2's by its *second* caption t5 (0.35; its first, t4, is third): a hit.
    assert metrics["retrieval/i2t_r1"] == pytest.approx(2 / 3) and metrics["retrieval/i2t_r5"] == 1.0
    assert recall_at_k_sets(sim.T, np.eye(3)[[0, 0, 1, 1, 2, 2]].T.astype(bool), ks=(2,)) == {2: 1.0}


def test_tied_captions_give_chance_level():
    """Constant scores: each image's 2 captions lie at random among 6, so R@1 = 1 - C(5,2)/C(6,2)."""
    relevant = np.eye(3, dtype=bool)[[0, 0, 1, 1, 2, 2]].T  # [images, captions]
    result = recall_at_k_sets(np.zeros((3, 6)), relevant, ks=(1, 2, 5))
    assert result[1] == pytest.approx(1 - 10 / 15) and result[2] == pytest.approx(1 - 6 / 15)
    assert result[5] == pytest.approx(1.0)
    relevant_nan = np.where(relevant, np.nan, 0.0)  # the relevant captions score NaN: never a hit
    assert recall_at_k_sets(relevant_nan, relevant, ks=(1, 5)) == {1: 0.0, 5: 0.0}


def test_caption_image_must_be_whole_image_indices():
    with pytest.raises(ValueError, match="must name one of 3 images"):
        retrieval_metrics(np.eye(3), np.eye(3)[:2], caption_image=np.array([0.5, 1.0]))
    # image 2 has no caption: it is no i2t query (it would otherwise count as a miss)
    metrics = retrieval_metrics(np.eye(3), np.eye(3)[:2], caption_image=np.array([0, 1]))
    assert metrics["retrieval/i2t_r1"] == 1.0 and metrics["retrieval/t2i_r1"] == 1.0
