"""Zero-shot classification: class embeddings from prompt templates, averaged then normalised."""

from __future__ import annotations

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
