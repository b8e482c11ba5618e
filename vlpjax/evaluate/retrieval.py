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
