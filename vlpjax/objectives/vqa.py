"""VQA as classification over an answer vocabulary, scored as in the VQA benchmark.

With several reference answers an answer scores min(#references that match / 3, 1); with a
single reference it scores 1 on an exact match. Training uses those scores as soft targets of a
per-answer sigmoid (binary cross-entropy summed over answers, as UNITER and ViLT do).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vlpjax.objectives.contrastive import AxisName, global_mean

MATCHES_FOR_FULL_CREDIT = 3


def normalize_answer(answer: str) -> str:
    return " ".join(answer.lower().strip().rstrip(".").split())


def answer_score(answer: str, references: Sequence[str]) -> float:
    """The benchmark's credit for `answer` given the reference answers of one question."""
    matches = sum(normalize_answer(r) == normalize_answer(answer) for r in references)
    if len(references) == 1:
        return float(matches)
    return min(matches / MATCHES_FOR_FULL_CREDIT, 1.0)


def answer_vocabulary(reference_lists: Iterable[Sequence[str]], max_answers: int | None = None) -> list[str]:
    """The most frequent training answers (ties broken alphabetically, so the order is stable)."""
    counts = Counter(normalize_answer(a) for refs in reference_lists for a in refs)
    ranked = sorted(counts, key=lambda a: (-counts[a], a))
    return ranked[:max_answers] if max_answers else ranked


def target_scores(references: Sequence[str], vocabulary: dict[str, int]) -> np.ndarray:
    """[A] soft targets: each vocabulary answer's score for this question."""
    scores = np.zeros(len(vocabulary), np.float32)
    for answer in {normalize_answer(r) for r in references}:
        if answer in vocabulary:
            scores[vocabulary[answer]] = answer_score(answer, references)
    return scores


def vqa_loss(logits: jax.Array, scores: jax.Array, *, axis_name: AxisName = None):
    """Sigmoid cross-entropy against soft scores, summed over answers, averaged over questions."""
    logits, scores = logits.astype(jnp.float32), scores.astype(jnp.float32)
    per_answer = jnp.maximum(logits, 0) - logits * scores + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    loss = global_mean(jnp.mean(jnp.sum(per_answer, axis=-1)), axis_name)
    predicted = jnp.argmax(logits, axis=-1)
    accuracy = global_mean(jnp.mean(jnp.take_along_axis(scores, predicted[:, None], axis=-1)), axis_name)
    return loss, {"vqa/loss": loss, "vqa/train_accuracy": accuracy}
