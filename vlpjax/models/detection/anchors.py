"""Anchors and box coding for a region proposal network (Faster R-CNN, Ren et al. 2015).

Boxes are (x1, y1, x2, y2) in image pixels. For a feature map of stride s and size H x W, every
cell (x, y) holds `len(scales) x len(ratios)` anchors centred on the cell's middle,
((x + 0.5) s, (y + 0.5) s): cell (0, 0) covers pixels [0, s), whose centre is s / 2, not s. Each
anchor has area (s * scale)^2 and aspect ratio h / w = ratio, so w = s * scale / sqrt(ratio) and
h = s * scale * sqrt(ratio): the size depends on the stride and the scale only, never on the
image size, and clipping to the image is a separate step (`clip_boxes`) that takes the image's
own height and width.

Order: cells row by row (y, then x), then scales, then ratios within a scale, which is the order
of the RPN head's outputs per cell.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp
import numpy as np

# Faster R-CNN's cap on a decoded log-scale (torchvision's log(1000 / 16)): exp() stays finite.
MAX_LOG_SCALE = math.log(1000.0 / 16)


def cell_anchors(stride: int, scales: Sequence[float], ratios: Sequence[float]) -> np.ndarray:
    """[len(scales) * len(ratios), 4] anchors of the cell at the origin, centred at (s/2, s/2)."""
    centre = stride / 2
    out = []
    for scale in scales:
        for ratio in ratios:
            w, h = stride * scale / math.sqrt(ratio), stride * scale * math.sqrt(ratio)
            out.append((centre - w / 2, centre - h / 2, centre + w / 2, centre + h / 2))
    return np.asarray(out, np.float32)


def grid_anchors(height: int, width: int, stride: int, scales: Sequence[float], ratios: Sequence[float]) -> np.ndarray:
    """[height * width * A, 4] anchors of an H x W feature map of stride `stride`."""
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    shifts = np.stack([xs, ys, xs, ys], axis=-1).reshape(-1, 1, 4).astype(np.float32) * stride
    return (shifts + cell_anchors(stride, scales, ratios)[None]).reshape(-1, 4)


def _centres(boxes):
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_boxes(anchors, boxes, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)):
    """[..., 4] deltas (dx, dy, dw, dh) that take each anchor to its box: centre offsets in
    anchor widths / heights, log size ratios, each times its weight."""
    ax, ay, aw, ah = _centres(anchors)
    bx, by, bw, bh = _centres(boxes)
    wx, wy, ww, wh = weights
    return jnp.stack([wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * jnp.log(bw / aw), wh * jnp.log(bh / ah)], axis=-1)


def decode_boxes(anchors, deltas, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)):
    """The inverse of `encode_boxes` (log scales capped at MAX_LOG_SCALE)."""
    ax, ay, aw, ah = _centres(anchors)
    wx, wy, ww, wh = weights
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = jnp.minimum(deltas[..., 2] / ww, MAX_LOG_SCALE)
    dh = jnp.minimum(deltas[..., 3] / wh, MAX_LOG_SCALE)
    cx, cy, w, h = ax + dx * aw, ay + dy * ah, aw * jnp.exp(dw), ah * jnp.exp(dh)
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def clip_boxes(boxes, height: float, width: float):
    """Boxes cut to the image [0, width] x [0, height]."""
    x = jnp.clip(boxes[..., 0::2], 0, width)
    y = jnp.clip(boxes[..., 1::2], 0, height)
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def box_iou(a, b):
    """[..., N, M] intersection over union of boxes a [..., N, 4] and b [..., M, 4] (0 for
    empty boxes)."""
    area = lambda x: jnp.maximum(x[..., 2] - x[..., 0], 0) * jnp.maximum(x[..., 3] - x[..., 1], 0)  # noqa: E731
    top_left = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
    bottom_right = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    size = jnp.maximum(bottom_right - top_left, 0)
    inter = size[..., 0] * size[..., 1]
    union = area(a)[..., :, None] + area(b)[..., None, :] - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)
