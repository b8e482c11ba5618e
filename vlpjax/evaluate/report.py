"""Pictures and tables for people: top-5 retrieved images per caption, a metrics table."""

from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

THUMB = 96


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip((np.asarray(image) + 1.0) * 127.5, 0, 255).astype(np.uint8)


def top_k_order(scores: np.ndarray, target: int, k: int) -> np.ndarray:
    """The k best candidates, as the picture shows them: a candidate tied with the target goes
    ahead of it (a tie must not look like a hit), and non-finite scores rank last."""
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    is_target = np.arange(len(scores)) == target
    return np.lexsort((is_target, -scores))[:k]


def top_k_png(
    path: str, captions: Sequence[str], similarity: np.ndarray, images: np.ndarray, targets: Sequence[int], k: int = 5
) -> None:
    """One row per caption: the caption, then its top-k images; the correct one framed in green."""
    text_width = 260
    sheet = Image.new("RGB", (text_width + k * (THUMB + 6), len(captions) * (THUMB + 8) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, (caption, scores, target) in enumerate(zip(captions, similarity, targets, strict=False)):
        top = top_k_order(np.asarray(scores), int(target), k)
        y = 4 + row * (THUMB + 8)
        draw.multiline_text((4, y), "\n".join(textwrap.wrap(caption, 40)[:6]), fill=(0, 0, 0))
        for col, index in enumerate(top):
            x = text_width + col * (THUMB + 6)
            thumb = Image.fromarray(_to_uint8(images[index])).resize((THUMB, THUMB), Image.NEAREST)
            colour = (0, 180, 0) if index == target else (200, 200, 200)
            draw.rectangle([x - 3, y - 3, x + THUMB + 2, y + THUMB + 2], outline=colour, width=3)
            sheet.paste(thumb, (x, y))
    sheet.save(path)


def metrics_table(metrics: Mapping[str, float]) -> str:
    width = max(len(k) for k in metrics)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  ------"]
    lines += [
        f"{k.ljust(width)}  {v:.4f}" if isinstance(v, float) else f"{k.ljust(width)}  {v}"
        for k, v in sorted(metrics.items())
    ]
    return "\n".join(lines)
