"""Scoring generated captions: BLEU-4, CIDEr-D and bag-of-words F1 for any data, and for
synthetic_shapes the objects a caption names, parsed back into (size, colour, shape, position)
tuples."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from vlpjax.data.shapes import COLOURS, POSITIONS, SHAPES, SIZES
from vlpjax.evaluate.caption_metrics import bleu, cider_d, simple_tokens

# Longest first, so "at the top left" wins over "at the top".
_POSITION_PHRASES = sorted(POSITIONS.values(), key=len, reverse=True)


def _one_object(part: str) -> tuple[str, str, str, str] | None:
    position = next((p for p in _POSITION_PHRASES if p in part), None)
    rest = part.replace(position, " ") if position else part
    words = rest.split()
    pick = lambda options: next((w for w in words if w in options), None)  # noqa: E731
    fields = (pick(SIZES), pick(COLOURS), pick(SHAPES), position)
    return fields if all(fields) else None


def caption_objects(caption: str) -> Counter:
    """The objects a shapes caption names, in any of its three styles; unparsable parts count
    as a `None` object, so a caption with junk never equals a clean one."""
    text = caption.lower().strip().rstrip(".")
    text = text.removeprefix("there is ")
    parts = [p.strip() for chunk in text.split(";") for p2 in chunk.split(",") for p in p2.split(" and ")]
    return Counter(_one_object(p) for p in parts if p)


def object_f1(predicted: Counter, reference: Counter) -> float:
    overlap = sum((predicted & reference).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(predicted.values()), overlap / sum(reference.values())
    return 2 * precision * recall / (precision + recall)


def token_f1(predicted: str, references: Sequence[str]) -> float:
    """Best bag-of-words F1 against any reference."""
    return max(object_f1(Counter(predicted.lower().split()), Counter(r.lower().split())) for r in references)


def caption_metrics(predicted: Sequence[str], references: Sequence[Sequence[str]], shapes: bool) -> dict[str, float]:
    """BLEU-4 and CIDEr-D (on `simple_tokens`), the best bag-of-words F1, and for shapes the
    parsed objects' F1 and exact match."""
    pairs = list(zip(predicted, references, strict=True))
    words = [simple_tokens(p) for p in predicted]
    word_refs = [[simple_tokens(r) for r in refs] for refs in references]
    metrics = {
        "caption/bleu4": bleu(words, word_refs)[3],
        "caption/cider_d": cider_d(words, word_refs)[0],
        "caption/token_f1": float(np.mean([token_f1(p, refs) for p, refs in pairs])),
    }
    if shapes:
        parsed = [(caption_objects(p), caption_objects(refs[0])) for p, refs in pairs]
        # An empty caption (a NaN model decodes to nothing) names no object: never an exact match.
        metrics["caption/exact"] = float(np.mean([bool(p) and p == r for p, r in parsed]))
        metrics["caption/object_f1"] = float(np.mean([object_f1(p, r) for p, r in parsed]))
    metrics["caption/images"] = float(len(predicted))
    return metrics
