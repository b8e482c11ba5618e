"""Zero-shot classification: class embeddings from prompt templates, averaged then normalised."""

from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_TEMPLATES = ("a {}", "there is a {}", "a picture with a {}")


def class_embeddings(
    embed_texts, class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
) -> np.ndarray:
    """embed_texts(list[str]) -> [N, D] unit vectors; returns [classes, D] unit vectors."""
    prompts = [t.format(name) for name in class_names for t in templates]
    emb = np.asarray(embed_texts(prompts), np.float32).reshape(len(class_names), len(templates), -1).mean(axis=1)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def zero_shot_accuracy(img_emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray) -> float:
    predictions = np.argmax(np.asarray(img_emb) @ class_emb.T, axis=1)
    return float(np.mean(predictions == labels))
