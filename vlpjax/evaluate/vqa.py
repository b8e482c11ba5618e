"""VQA accuracy, overall and per question type (the question's first two words)."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from vlpjax.objectives.vqa import answer_score


def question_type(question: str) -> str:
    return "_".join(question.lower().split()[:2])


def vqa_accuracy(
    predicted: Sequence[str], references: Sequence[Sequence[str]], questions: Sequence[str]
) -> dict[str, float]:
    if not len(predicted):
        raise ValueError("no questions to score")
    scores = np.array([answer_score(p, refs) for p, refs in zip(predicted, references, strict=False)])
    by_type = defaultdict(list)
    for question, score in zip(questions, scores, strict=False):
        by_type[question_type(question)].append(score)
    metrics = {"vqa/accuracy": float(scores.mean()), "vqa/questions": float(len(scores))}
    metrics.update({f"vqa/accuracy_{kind}": float(np.mean(s)) for kind, s in sorted(by_type.items())})
    return metrics
