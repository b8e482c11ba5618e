"""Image-text retrieval: Recall@K in both directions from a similarity matrix."""

from __future__ import annotations

import numpy as np

KS = (1, 5, 10)


def recall_at_k(similarity: np.ndarray, targets: np.ndarray, ks=KS) -> dict[int, float]:
    """similarity [Q, N], targets [Q]: fraction of queries whose target ranks within the top k
    (`recall_at_k_sets` with one relevant candidate per query)."""
    sim = np.asarray(similarity)
    relevant = np.zeros(sim.shape, bool)
    relevant[np.arange(len(targets)), targets] = True
    return recall_at_k_sets(sim, relevant, ks)


def recall_at_k_sets(similarity: np.ndarray, relevant: np.ndarray, ks=KS) -> dict[int, float]:
    """similarity [Q, N], relevant [Q, N] bool: the fraction of queries with at least one
    relevant candidate in the top k (COCO / Flickr image->text: any of the image's captions).

    A broken model must not score well, so nothing about the scores may favour a relevant one:
    - ties are broken at random and the query counts the expected hit: with `g` irrelevant
      candidates strictly above its best relevant score, `t` tied with it and `m` relevant ones
      at it, the `m` lie at random among ranks g .. g+t+m-1 (constant scores give chance level);
    - a non-finite score (NaN, +-inf) ranks last: a relevant candidate scored so never counts,
      and a non-finite candidate neither beats nor ties a finite relevant one.
    """
    sim = np.asarray(similarity)
    relevant = np.asarray(relevant, bool)
    finite = np.isfinite(sim)
    scored = relevant & finite
    best = np.max(np.where(scored, sim, -np.inf), axis=1)
    has_best = scored.any(axis=1)
    with np.errstate(invalid="ignore"):
        above = np.sum(finite & ~relevant & (sim > best[:, None]), axis=1)
        tied = np.sum(finite & ~relevant & (sim == best[:, None]), axis=1)
        at_best = np.sum(scored & (sim == best[:, None]), axis=1)
    slots = tied + at_best  # the ranks the tied group shares, from `above` on
    out = {}
    for k in ks:
        within = np.clip(k - above, 0, slots)  # how many of the group's ranks fall in the top k
        out[k] = float(np.mean(np.where(has_best, 1.0 - _all_outside(slots, within, at_best), 0.0)))
    return out


def _all_outside(slots: np.ndarray, within: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """P(none of `chosen` random ranks among `slots` falls in the first `within`):
    C(slots - within, chosen) / C(slots, chosen), as a product over the chosen ranks."""
    chance = np.ones(slots.shape)
    for i in range(int(chosen.max(initial=0))):
        step = np.clip(slots - within - i, 0, None) / np.maximum(slots - i, 1)
        chance = np.where(i < chosen, chance * step, chance)
    return chance


def caption_relevance(owner, num_images: int) -> np.ndarray:
    """relevant [texts, images]: caption t describes image `owner[t]`."""
    owner = np.asarray(owner)
    valid = np.issubdtype(owner.dtype, np.integer) and owner.ndim == 1
    if not valid or owner.min(initial=0) < 0 or owner.max(initial=0) >= num_images:
        raise ValueError(f"caption_image must name one of {num_images} images for each caption")
    return owner[:, None] == np.arange(num_images)[None, :]


def _recall_both_ways(t2i: np.ndarray, i2t: np.ndarray, relevant: np.ndarray, prefix: str) -> dict[str, float]:
    """t2i [texts, images] and i2t [images, texts] scores; images without a caption are no i2t query."""
    captioned = relevant.any(axis=0)
    out = {f"{prefix}t2i_r{k}": v for k, v in recall_at_k_sets(t2i, relevant).items()}
    out.update({f"{prefix}i2t_r{k}": v for k, v in recall_at_k_sets(i2t[captioned], relevant.T[captioned]).items()})
    return out


def retrieval_metrics(
    img_emb: np.ndarray, txt_emb: np.ndarray, prefix: str = "retrieval", caption_image: np.ndarray | None = None
) -> dict[str, float]:
    """R@1/5/10 for i2t and t2i. `caption_image[t]`: the image caption t describes (COCO and
    Flickr have 5 per image); None: caption i describes image i. t2i ranks the images for every
    caption; i2t counts a hit when any of the image's captions is in the top k."""
    sim = np.asarray(txt_emb, np.float32) @ np.asarray(img_emb, np.float32).T  # [texts, images]
    owner = np.arange(sim.shape[0]) if caption_image is None else caption_image
    if len(owner) != sim.shape[0]:
        raise ValueError(f"caption_image must name one of {sim.shape[1]} images for each of {sim.shape[0]} captions")
    return _recall_both_ways(sim, sim.T, caption_relevance(owner, sim.shape[1]), f"{prefix}/")


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
    img_emb: np.ndarray,
    txt_emb: np.ndarray,
    itm_score,
    top_k: int,
    prefix: str = "retrieval/itm",
    caption_image: np.ndarray | None = None,
) -> dict[str, float]:
    """ITC retrieval, then `itm_score(text_rows, image_rows) -> [P]` re-ranks each query's top k;
    `caption_image` as for `retrieval_metrics`."""
    sim = np.asarray(txt_emb, np.float32) @ np.asarray(img_emb, np.float32).T  # [texts, images]
    owner = np.arange(sim.shape[0]) if caption_image is None else caption_image
    t2i = reranked_similarity(sim, lambda t, i: itm_score(t, i), top_k)
    i2t = reranked_similarity(sim.T, lambda i, t: itm_score(t, i), top_k)
    return _recall_both_ways(t2i, i2t, caption_relevance(owner, sim.shape[1]), f"{prefix}_")
