"""Image-text retrieval: Recall@K in both directions from a similarity matrix."""

from __future__ import annotations

import numpy as np

KS = (1, 5, 10)


def recall_at_k(similarity: np.ndarray, targets: np.ndarray, ks=KS) -> dict[int, float]:
    """similarity [Q, N], targets [Q]: fraction of queries whose target ranks within the top k."""
    target_scores = similarity[np.arange(len(targets)), targets]
    # Rank = how many candidates score strictly higher than the target (ties favour the target).
    rank = np.sum(similarity > target_scores[:, None], axis=1)
    return {k: float(np.mean(rank < k)) for k in ks}


def retrieval_metrics(img_emb: np.ndarray, txt_emb: np.ndarray, prefix: str = "retrieval") -> dict[str, float]:
    """Paired embeddings (caption i describes image i) -> R@1/5/10 for i2t and t2i."""
    sim = np.asarray(txt_emb, np.float32) @ np.asarray(img_emb, np.float32).T  # [texts, images]
    targets = np.arange(sim.shape[0])
    out = {}
    for k, v in recall_at_k(sim, targets).items():
        out[f"{prefix}/t2i_r{k}"] = v
    for k, v in recall_at_k(sim.T, targets).items():
        out[f"{prefix}/i2t_r{k}"] = v
    return out


def reranked_similarity(similarity: np.ndarray, score_pairs, top_k: int) -> np.ndarray:
    """Re-order each query's top-k candidates by `score_pairs(queries [P], candidates [P]) -> [P]`.

    The re-ranked candidates stay ahead of all others, which keep their ITC order, so recall
    beyond k is unchanged by construction.
    """
    top_k = min(top_k, similarity.shape[1])
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :top_k]
    queries = np.repeat(np.arange(similarity.shape[0]), top_k)
    scores = np.asarray(score_pairs(queries, top.ravel()), np.float64).reshape(top.shape)
    lead = np.abs(similarity).max() + np.abs(scores).max() + 1.0
    reranked = similarity.astype(np.float64).copy()
    reranked[np.arange(similarity.shape[0])[:, None], top] = 2 * lead + scores
    return reranked


def reranked_retrieval_metrics(
    img_emb: np.ndarray, txt_emb: np.ndarray, itm_score, top_k: int, prefix: str = "retrieval/itm"
) -> dict[str, float]:
    """ITC retrieval, then `itm_score(text_rows, image_rows) -> [P]` re-ranks each query's top k."""
    sim = np.asarray(txt_emb, np.float32) @ np.asarray(img_emb, np.float32).T  # [texts, images]
    targets = np.arange(sim.shape[0])
    t2i = reranked_similarity(sim, lambda t, i: itm_score(t, i), top_k)
    i2t = reranked_similarity(sim.T, lambda i, t: itm_score(t, i), top_k)
    out = {f"{prefix}_t2i_r{k}": v for k, v in recall_at_k(t2i, targets).items()}
    out.update({f"{prefix}_i2t_r{k}": v for k, v in recall_at_k(i2t, targets).items()})
    return out
