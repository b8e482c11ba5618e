"""How well a detector's proposals cover the objects: the recall of the ground-truth boxes by
each image's `top_k` proposals at an IoU threshold, and the mean IoU of each recalled box's
best proposal. A proposal with a non-finite coordinate overlaps nothing. With a box head, also
how often it names the class of a ground-truth box (background counts as a miss)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlpjax.errors import InvalidInput
from vlpjax.models.detection.anchors import box_iou


@functools.partial(jax.jit, static_argnums=0)
def _proposals(graphdef, state, images):
    return nnx.merge(graphdef, state).proposals({"image": images})


@functools.partial(jax.jit, static_argnums=0)
def _box_classes(graphdef, state, images, boxes):
    return jnp.argmax(nnx.merge(graphdef, state).classify(images, boxes), axis=-1)


def best_overlaps(proposals: np.ndarray, valid: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """[G] each ground-truth box's highest IoU with one of the image's valid proposals (0: none)."""
    finite = valid & np.isfinite(proposals).all(axis=1)
    if not finite.any() or not len(gt_boxes):
        return np.zeros(len(gt_boxes))
    return np.asarray(box_iou(gt_boxes, proposals[finite])).max(axis=1)


def proposal_metrics(overlaps: np.ndarray, iou: float) -> dict[str, float]:
    if not len(overlaps):
        raise InvalidInput("the split has no ground-truth boxes to recall")
    recalled = overlaps >= iou
    return {
        "proposals/recall": float(recalled.mean()),
        "proposals/mean_iou": float(overlaps[recalled].mean()) if recalled.any() else 0.0,
        "proposals/boxes": float(len(overlaps)),
    }


def box_accuracy(hits: int, boxes: int) -> dict[str, float]:
    return {"proposals/box_accuracy": hits / boxes} if boxes else {}


class ProposalScorer:
    def __init__(self, model):
        self.graphdef, self.state = nnx.split(model)
        self.image_size = model.config.image_size
        self.has_box_head = model.box_head is not None

    def box_hits(self, images: np.ndarray, gt_boxes: list[np.ndarray], labels: list[np.ndarray]) -> tuple[int, int]:
        """(boxes whose class the box head names, boxes of known class) in a batch of images."""
        most = max(1, max(len(b) for b in gt_boxes))
        padded, known = np.zeros((len(images), most, 4), np.float32), np.full((len(images), most), -1)
        for row, (boxes, classes) in enumerate(zip(gt_boxes, labels, strict=True)):
            padded[row, : len(boxes)], known[row, : len(boxes)] = np.asarray(boxes) * self.image_size, classes
        predicted = np.asarray(_box_classes(self.graphdef, self.state, images, padded))
        return int(np.sum((known >= 0) & (predicted == known + 1))), int(np.sum(known >= 0))

    def overlaps(self, images: np.ndarray, gt_boxes: list[np.ndarray]) -> np.ndarray:
        """The best-proposal IoU of every ground-truth box (normalised) of a batch of images."""
        boxes, _, valid = (np.asarray(x) for x in _proposals(self.graphdef, self.state, images))
        return np.concatenate(
            [
                best_overlaps(b, v, np.asarray(g) * self.image_size)
                for b, v, g in zip(boxes, valid, gt_boxes, strict=True)
            ]
        )
