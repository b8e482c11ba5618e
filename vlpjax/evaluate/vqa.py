"""VQA accuracy, overall and per question type (the question's first two words)."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from vlpjax.data.answers import answer_score


def question_type(question: str) -> str:
    return "_".join(question.lower().split()[:2])


def accuracy_metrics(scores: np.ndarray, questions: Sequence[str]) -> dict[str, float]:
    if not len(scores):
        raise ValueError("no questions to score")
    by_type = defaultdict(list)
    for question, score in zip(questions, scores, strict=True):
        by_type[question_type(question)].append(score)
    metrics = {"vqa/accuracy": float(np.mean(scores)), "vqa/questions": float(len(scores))}
    metrics.update({f"vqa/accuracy_{kind}": float(np.mean(s)) for kind, s in sorted(by_type.items())})
    return metrics


def vqa_accuracy(
    predicted: Sequence[str], references: Sequence[Sequence[str]], questions: Sequence[str]
) -> dict[str, float]:
    scores = np.array([answer_score(p, refs) for p, refs in zip(predicted, references, strict=True)])
    return accuracy_metrics(scores, questions)


def top_answer_credit(logits: np.ndarray, answers: Sequence[str], references: Sequence[str]) -> float:
    """The benchmark's credit for the top answer of one question's logits [A].

    Non-finite logits rank last, so a row with none finite earns nothing (argmax would pick
    answer 0, the most frequent training answer); a tie among the best answers earns their mean
    credit, the expected credit of breaking it at random.
    """
    logits = np.asarray(logits, np.float64)
    finite = np.isfinite(logits)
    if not finite.any():
        return 0.0
    best = np.flatnonzero(finite & (logits == logits[finite].max()))
    return float(np.mean([answer_score(answers[i], references) for i in best]))


def answer_credits(logits: np.ndarray, answers: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """`top_answer_credit` of each question's logits row."""
    return np.array([top_answer_credit(row, answers, refs) for row, refs in zip(logits, references, strict=True)])
