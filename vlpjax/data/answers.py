"""VQA answers: normalisation, the answer vocabulary, and the benchmark's per-answer credit.

With several reference answers an answer scores min(#references that match / 3, 1); with a
single reference it scores 1 on an exact match. The input pipeline turns each question's
references into those scores over the vocabulary (the VQA loss's soft targets); the evaluators
score predicted answers with the same rule.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np

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
