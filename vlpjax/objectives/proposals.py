"""The region proposal network's loss (Faster R-CNN): which anchors are objects, and where.

Per image:
- every anchor is matched to the ground-truth box it overlaps most: positive at IoU >= 0.7,
  negative below 0.3, ignored between; each box's best anchors (all that tie its highest IoU,
  when that is above 0) are positive too, so no box goes without one;
- `per_image` anchors are sampled, at most `positive_fraction` of them positive, the rest
  negative, each choice a function of the row's key;
- loss = binary cross-entropy of the objectness over the sampled anchors + smooth-L1
  (beta 1/9) of the positives' encoded box deltas, both summed and divided by the number of
  sampled anchors of the global batch.

The second stage (`box_head_loss`): every ground-truth box and current proposal is a region,
labelled with the class of the box it overlaps at IoU >= 0.5 or background; the box head's
cross-entropy is averaged over the regions of the global batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vlpjax.models.detection.anchors import box_iou, encode_boxes
from vlpjax.objectives.shards import AxisName, global_row_keys, global_sum

POSITIVE_IOU, NEGATIVE_IOU = 0.7, 0.3
SMOOTH_L1_BETA = 1.0 / 9


def anchor_labels(anchors: jax.Array, gt_boxes: jax.Array, gt_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(labels [A]: 1 object, 0 background, -1 ignored; the matched box of each anchor [A, 4])."""
    iou = jnp.where(gt_mask[None, :], box_iou(anchors, gt_boxes), -1.0)  # [A, G]; padding never matches
    best = jnp.max(iou, axis=1)
    labels = jnp.where(best >= POSITIVE_IOU, 1, jnp.where(best < NEGATIVE_IOU, 0, -1))
    best_per_box = jnp.max(iou, axis=0)  # [G]
    is_best = (iou == best_per_box[None, :]) & (best_per_box[None, :] > 0) & gt_mask[None, :]
    labels = jnp.where(jnp.any(is_best, axis=1), 1, labels)
    return labels, gt_boxes[jnp.argmax(iou, axis=1)]


def sample_anchors(key: jax.Array, labels: jax.Array, per_image: int, positive_fraction: float) -> jax.Array:
    """[A] bool: up to per_image * positive_fraction random positives, then random negatives up
    to per_image in all."""
    priority = jax.random.uniform(key, labels.shape)

    def first(selected, count):
        """The `count` selected anchors of lowest priority."""
        rank = jnp.argsort(jnp.argsort(jnp.where(selected, priority, 2.0)))
        return selected & (rank < count)

    positives = first(labels == 1, int(per_image * positive_fraction))
    negatives = first(labels == 0, per_image - jnp.sum(positives))
    return positives | negatives


def rpn_loss(
    objectness: jax.Array,
    deltas: jax.Array,
    gt_boxes: jax.Array,
    gt_mask: jax.Array,
    key: jax.Array,
    *,
    anchors: jax.Array,
    image_size: int,
    per_image: int = 256,
    positive_fraction: float = 0.5,
    axis_name: AxisName = None,
):
    """objectness [b, A], deltas [b, A, 4], gt_boxes [b, G, 4] normalised, gt_mask [b, G]."""
    gt_pixels = gt_boxes.astype(jnp.float32) * image_size
    labels, matched = jax.vmap(anchor_labels, in_axes=(None, 0, 0))(anchors, gt_pixels, gt_mask.astype(bool))
    keys = global_row_keys(key, objectness.shape[0], axis_name)
    sampled = jax.vmap(sample_anchors, in_axes=(0, 0, None, None))(keys, labels, per_image, positive_fraction)
    positive = sampled & (labels == 1)
    targets = jax.vmap(encode_boxes, in_axes=(None, 0))(anchors, jnp.where(positive[..., None], matched, anchors))
    count = jnp.maximum(global_sum(jnp.sum(sampled), axis_name), 1).astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(objectness, (labels == 1).astype(jnp.float32))
    objectness_loss = global_sum(jnp.sum(jnp.where(sampled, bce, 0.0)), axis_name) / count
    smooth_l1 = optax.huber_loss(deltas, targets, delta=SMOOTH_L1_BETA) / SMOOTH_L1_BETA  # smooth-L1 with beta
    box_loss = global_sum(jnp.sum(jnp.where(positive[..., None], smooth_l1, 0.0)), axis_name) / count
    hits = global_sum(jnp.sum(sampled & ((objectness > 0) == (labels == 1))), axis_name)
    rows = global_sum(objectness.shape[0], axis_name)
    metrics = {
        "rpn/objectness_loss": objectness_loss,
        "rpn/box_loss": box_loss,
        "rpn/accuracy": hits / count,
        "rpn/positives": global_sum(jnp.sum(positive), axis_name) / rows,
    }
    return objectness_loss + box_loss, metrics


# The box head's regions (Fast R-CNN): an object where the IoU with a box reaches this.
ROI_OBJECT_IOU = 0.5


def roi_classes(
    roi_boxes: jax.Array, roi_valid: jax.Array, gt_boxes: jax.Array, gt_mask: jax.Array, gt_labels: jax.Array
) -> jax.Array:
    """[R] each region's target: 1 + the class of the box it overlaps most at IoU >= 0.5,
    0 (background) below that, -1 (not scored) for an invalid region or a box of unknown class."""
    iou = jnp.where(gt_mask[None, :], box_iou(roi_boxes, gt_boxes), -1.0)  # [R, G]
    label = gt_labels[jnp.argmax(iou, axis=1)]
    classes = jnp.where(jnp.max(iou, axis=1) >= ROI_OBJECT_IOU, jnp.where(label >= 0, label + 1, -1), 0)
    return jnp.where(roi_valid, classes, -1)


def box_head_loss(
    roi_logits: jax.Array,
    roi_boxes: jax.Array,
    roi_valid: jax.Array,
    gt_boxes: jax.Array,
    gt_mask: jax.Array,
    gt_labels: jax.Array,
    *,
    image_size: int,
    axis_name: AxisName = None,
):
    """Cross-entropy of the box head's class logits [b, R, 1 + C] over the scored regions of the
    global batch (roi_boxes in pixels; gt_boxes normalised)."""
    gt_pixels = gt_boxes.astype(jnp.float32) * image_size
    classes = jax.vmap(roi_classes)(roi_boxes, roi_valid, gt_pixels, gt_mask.astype(bool), gt_labels)
    scored = classes >= 0
    count = jnp.maximum(global_sum(jnp.sum(scored), axis_name), 1).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(roi_logits, jnp.maximum(classes, 0))
    loss = global_sum(jnp.sum(jnp.where(scored, ce, 0.0)), axis_name) / count
    hits = global_sum(jnp.sum(scored & (jnp.argmax(roi_logits, axis=-1) == classes)), axis_name)
    metrics = {
        "box_head/accuracy": hits / count,
        "box_head/objects": global_sum(jnp.sum(classes > 0), axis_name) / count,
    }
    return loss, metrics
