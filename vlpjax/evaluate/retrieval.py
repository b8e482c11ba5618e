"""Image-text retrieval: Recall@K in both directions from a similarity matrix."""

from __future__ import annotations

import numpy as np

KS = (1, 5, 10)


def recall_at_k(similarity: np.ndarray, targets: np.ndarray, ks=KS) -> dict[int, float]:
    """similarity [Q, N], targets [Q]: fraction of queries whose target ranks within the top k.

    A broken model must not score well, so nothing about the scores may favour the target:
    - a tie is broken at random, and the query counts the expected hit: with `g` candidates
      strictly above the target and `t` tied with it, the target lies at each of ranks g .. g+t
      with equal chance (constant scores give exactly k/N);
    - a non-finite score (NaN, +-inf) ranks last: a query whose target scores so is a miss at
      every k, and a non-finite candidate neither beats nor ties a finite target.
    """
    sim = np.asarray(similarity)
    rows = np.arange(len(targets))
    target_scores = sim[rows, targets]
    others = np.isfinite(sim)
    others[rows, targets] = False
    with np.errstate(invalid="ignore"):
        above = np.sum(others & (sim > target_scores[:, None]), axis=1)
        tied = np.sum(others & (sim == target_scores[:, None]), axis=1)
    finite_target = np.isfinite(target_scores)
    out = {}
    for k in ks:
        hit = np.clip((k - above) / (tied + 1), 0.0, 1.0)
        out[k] = float(np.mean(np.where(finite_target, hit, 0.0)))
    return out


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
    beyond k is unchanged by construction. Non-finite scores rank last (see `recall_at_k`): a
    candidate with a non-finite ITC score is never promoted, and one whose ITM score is
    non-finite becomes NaN.
    """
    sim = np.asarray(similarity, np.float64)
    top_k = min(top_k, sim.shape[1])
    rows = np.arange(sim.shape[0])[:, None]
    # Non-finite ITC scores sort last, so they enter the top k only when a row has too few finite ones.
    top = np.argsort(-np.where(np.isfinite(sim), sim, -np.inf), axis=1, kind="stable")[:, :top_k]
    queries = np.repeat(np.arange(sim.shape[0]), top_k)
    scores = np.asarray(score_pairs(queries, top.ravel()), np.float64).reshape(top.shape)
    promoted = np.isfinite(sim[rows, top])
    finite_scores = np.isfinite(scores)
    finite_sim = np.abs(sim[np.isfinite(sim)])
    lead = (finite_sim.max() if finite_sim.size else 0.0) + np.abs(scores[finite_scores]).max(initial=0.0) + 1.0
    reranked = sim.copy()
    reranked[rows, top] = np.where(promoted, np.where(finite_scores, 2 * lead + scores, np.nan), sim[rows, top])
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
