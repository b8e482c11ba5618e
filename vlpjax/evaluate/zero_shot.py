"""Zero-shot classification: class embeddings from prompt templates, averaged then normalised."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from vlpjax.evaluate.retrieval import recall_at_k

DEFAULT_TEMPLATES = ("a {}", "there is a {}", "a picture with a {}")


def class_embeddings(
    embed_texts, class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
) -> np.ndarray:
    """embed_texts(list[str]) -> [N, D] unit vectors; returns [classes, D] unit vectors."""
    prompts = [t.format(name) for name in class_names for t in templates]
    emb = np.asarray(embed_texts(prompts), np.float32).reshape(len(class_names), len(templates), -1).mean(axis=1)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def zero_shot_accuracy(img_emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the class logits, scored as retrieval R@1 over the classes: a tie among
    the best classes earns its expected share, a non-finite label logit is wrong, and a
    non-finite logit of another class ranks last (a NaN model scores 0, a constant one 1/classes)."""
    logits = np.asarray(img_emb, np.float32) @ np.asarray(class_emb, np.float32).T
    return recall_at_k(logits, np.asarray(labels), ks=(1,))[1]


def load_templates(templates) -> tuple[str, ...]:
    """Prompt templates: a list of strings with one "{}", or a file of them (one a line)."""
    if isinstance(templates, str):
        if not os.path.isfile(templates):
            raise FileNotFoundError(f"prompt templates file {templates!r} does not exist")
        with open(templates) as f:
            templates = [line.strip() for line in f if line.strip()]
    templates = tuple(templates)
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if not templates or bad:
        raise ValueError(f"prompt templates need exactly one '{{}}' each (the class name); got {bad or 'none'}")
    return templates


def zero_shot_metrics(
    img_emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray, prefix: str = "zero_shot"
) -> dict[str, float]:
    """Top-1 and top-5 accuracy and the mean over classes of each class's top-1 accuracy, all
    scored as `zero_shot_accuracy` is (ties share credit, non-finite logits rank last)."""
    logits = np.asarray(img_emb, np.float32) @ np.asarray(class_emb, np.float32).T
    labels = np.asarray(labels)
    top = recall_at_k(logits, labels, ks=(1, 5))
    per_class = [recall_at_k(logits[labels == c], labels[labels == c], ks=(1,))[1] for c in np.unique(labels)]
    return {
        f"{prefix}/top1": top[1],
        f"{prefix}/top5": top[5],
        f"{prefix}/mean_per_class": float(np.mean(per_class)),
    }
