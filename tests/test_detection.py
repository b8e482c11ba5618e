"""Detector pieces: anchors against a hand-written table, box coding round trips, RoIAlign
against a plain NumPy loop of its definition, NMS against a greedy reference."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.test_recipes import ROOT, _config
from tests.train_helpers import objective_on_one_and_eight_devices
from vlpjax.config import ConfigError
from vlpjax.data.builders import load_dataset
from vlpjax.data.pipeline import (
    PipelineConfig,
    TrainTransform,
    box_labels_of,
    box_targets,
    boxes_of,
    check_box_labels,
)
from vlpjax.errors import InvalidInput
from vlpjax.evaluate.proposals import ProposalScorer, best_overlaps, box_accuracy, proposal_metrics
from vlpjax.interop.safetensors_io import variable_at
from vlpjax.models.detection.anchors import box_iou, clip_boxes, decode_boxes, encode_boxes, grid_anchors
from vlpjax.models.detection.detector import Detector, build_detector
from vlpjax.models.detection.nms import nms
from vlpjax.models.detection.roi_align import roi_align
from vlpjax.objectives.proposals import anchor_labels, box_head_loss, roi_classes, rpn_loss, sample_anchors
from vlpjax.train import checkpoints
from vlpjax.train.loop import train
from vlpjax.train.restore import trained_model
from vlpjax.train.rules import path_string

# A 2 x 2 map of stride 16, scales (2, 4), ratios (0.5, 1, 2), written out by hand: cell centres
# at the middle of each 16 px cell; sizes (w, h) with w * h = (16 * scale)^2 and h / w = ratio.
CENTRES = [(8, 8), (24, 8), (8, 24), (24, 24)]  # cells row by row: (x=0,y=0), (x=1,y=0), ...
SIZES = [  # scale 2: 32 px side; scale 4: 64 px side; ratios 0.5, 1, 2 within each
    (45.254834, 22.627417), (32, 32), (22.627417, 45.254834),
    (90.509668, 45.254834), (64, 64), (45.254834, 90.509668),
]  # fmt: skip


def test_anchors_equal_the_hand_written_table():
    anchors = grid_anchors(2, 2, 16, scales=(2, 4), ratios=(0.5, 1, 2))
    assert anchors.shape == (24, 4)
    expected = np.array(
        [(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2) for cx, cy in CENTRES for w, h in SIZES], np.float32
    )
    np.testing.assert_allclose(anchors, expected, rtol=1e-6, atol=1e-4)
    w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    np.testing.assert_allclose(np.sqrt(w * h), np.tile([32, 32, 32, 64, 64, 64], 4), rtol=1e-5)
    np.testing.assert_allclose(h / w, np.tile([0.5, 1, 2], 8), rtol=1e-5)


def test_the_anchor_size_does_not_depend_on_the_map_size():
    small, large = grid_anchors(2, 2, 16, (2,), (1,)), grid_anchors(50, 50, 16, (2,), (1,))
    np.testing.assert_array_equal(small[0], large[0])
    np.testing.assert_allclose(large[-1], [792 - 16, 792 - 16, 792 + 16, 792 + 16])  # (49 + 0.5) * 16 = 792


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encoding_then_decoding_is_the_identity(weights):
    rng = np.random.default_rng(0)
    anchors = grid_anchors(4, 5, 16, (1, 2), (0.5, 1, 2))
    xy = rng.uniform(0, 80, size=(len(anchors), 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 60, size=(len(anchors), 2))], axis=1).astype(np.float32)
    deltas = encode_boxes(jnp.asarray(anchors), jnp.asarray(boxes), weights)
    np.testing.assert_allclose(np.asarray(decode_boxes(jnp.asarray(anchors), deltas, weights)), boxes, atol=1e-4)
    np.testing.assert_allclose(np.asarray(encode_boxes(anchors, anchors, weights)), 0.0, atol=1e-6)


def test_clipping_uses_the_image_size_and_iou_by_hand():
    boxes = jnp.asarray([[-5.0, -3.0, 40.0, 70.0]])
    np.testing.assert_array_equal(np.asarray(clip_boxes(boxes, 48, 32)), [[0, 0, 32, 48]])
    a, b = jnp.asarray([[0.0, 0, 10, 10]]), jnp.asarray([[5.0, 0, 15, 10], [20.0, 20, 30, 30], [0.0, 0, 10, 10]])
    np.testing.assert_allclose(np.asarray(box_iou(a, b)), [[50 / 150, 0.0, 1.0]], rtol=1e-6)


# --- RoIAlign: the definition written as loops ---------------------------------------------------


def _bilinear_reference(feat, y, x):
    h, w = feat.shape[:2]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(feat.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(math.floor(y)), int(math.floor(x))
    if y_low >= h - 1:
        y_low = y_high = h - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_low = x_high = w - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    return (
        (1 - ly) * (1 - lx) * feat[y_low, x_low]
        + (1 - ly) * lx * feat[y_low, x_high]
        + ly * (1 - lx) * feat[y_high, x_low]
        + ly * lx * feat[y_high, x_high]
    )


def _roi_align_reference(feat, box, size, scale, ratio):
    x1, y1, x2, y2 = (v * scale - 0.5 for v in box)
    bin_w, bin_h = (x2 - x1) / size, (y2 - y1) / size
    out = np.zeros((size, size, feat.shape[-1]))
    for ph in range(size):
        for pw in range(size):
            total = np.zeros(feat.shape[-1])
            for iy in range(ratio):
                y = y1 + ph * bin_h + (iy + 0.5) * bin_h / ratio
                for ix in range(ratio):
                    x = x1 + pw * bin_w + (ix + 0.5) * bin_w / ratio
                    total += _bilinear_reference(feat, y, x)
            out[ph, pw] = total / (ratio * ratio)
    return out


def test_roi_align_equals_the_loop_definition_inside_across_the_border_and_below_a_bin():
    rng = np.random.default_rng(0)
    feat = rng.normal(size=(6, 7, 3)).astype(np.float32)  # a 96 x 112 px image at stride 16
    boxes = np.array(
        [
            [10.0, 12.0, 70.0, 50.0],  # inside
            [-30.0, -20.0, 40.0, 30.0],  # crosses the top-left border
            [80.0, 60.0, 140.0, 120.0],  # crosses the bottom-right border, partly more than a cell out
            [33.0, 41.0, 35.5, 42.0],  # smaller than a bin
            [-60.0, 20.0, -20.0, 40.0],  # wholly outside: reads zeros where more than a cell out
            [0.0, 0.0, 112.0, 96.0],  # the whole image
        ],
        np.float32,
    )
    for ratio in (1, 2, 3):
        ours = np.asarray(roi_align(jnp.asarray(feat), jnp.asarray(boxes), 4, 1 / 16, ratio))
        for r, box in enumerate(boxes):
            expected = _roi_align_reference(feat, box, 4, 1 / 16, ratio)
            np.testing.assert_allclose(ours[r], expected, rtol=1e-5, atol=1e-5, err_msg=f"box {r}, ratio {ratio}")


# --- NMS -------------------------------------------------------------------------------------------


def _greedy_reference(boxes, scores, threshold):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(np.asarray(box_iou(boxes[i : i + 1], boxes[j : j + 1]))[0, 0] <= threshold for j in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(4))
def test_nms_keeps_what_the_greedy_reference_keeps(seed):
    rng = np.random.default_rng(seed)
    n = 40
    xy = rng.uniform(0, 50, size=(n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, size=(n, 2))], axis=1).astype(np.float32)
    scores = rng.choice([0.1, 0.3, 0.5, 0.7, 0.9], size=n).astype(np.float32)  # many ties
    boxes[5] = boxes[3]  # an exact duplicate
    expected = _greedy_reference(boxes, scores, 0.5)
    for max_out in (5, len(expected), 64):
        indices, valid = jax.jit(nms, static_argnums=(2, 3))(jnp.asarray(boxes), jnp.asarray(scores), 0.5, max_out)
        kept = [int(i) for i, v in zip(np.asarray(indices), np.asarray(valid), strict=True) if v]
        assert kept == expected[:max_out]
        assert indices.shape == (max_out,) and all(int(i) == -1 for i in np.asarray(indices)[len(kept) :])


# --- RPN targets, sampling, loss ---------------------------------------------------------------


def test_anchor_labels_by_the_thresholds_and_the_best_anchor_of_each_box():
    anchors = jnp.asarray(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1 with box 0: positive
            [0.0, 0.0, 10.0, 12.0],  # IoU 10/12 = 0.83 with box 0: positive
            [2.0, 0.0, 12.0, 10.0],  # IoU 8/12 = 0.67: ignored
            [5.0, 0.0, 15.0, 10.0],  # IoU 50/150 = 0.33: ignored
            [7.0, 0.0, 17.0, 10.0],  # IoU 30/170 = 0.18: negative
            [40.0, 40.0, 50.0, 50.0],  # IoU 25/300 = 0.08 with box 1, its best anchor: positive
            [80.0, 80.0, 90.0, 90.0],  # overlaps nothing: negative (and not box 2's, which is padding)
        ]
    )
    gt = jnp.asarray([[0.0, 0.0, 10.0, 10.0], [45.0, 45.0, 60.0, 60.0], [80.0, 80.0, 90.0, 90.0]])
    labels, matched = anchor_labels(anchors, gt, jnp.asarray([True, True, False]))
    assert np.asarray(labels).tolist() == [1, 1, -1, -1, 0, 1, 0]
    np.testing.assert_array_equal(np.asarray(matched)[[0, 1, 5]], np.asarray(gt)[[0, 0, 1]])


def test_sampling_keeps_the_positive_fraction_and_fills_with_negatives():
    labels = jnp.asarray([1] * 10 + [0] * 500 + [-1] * 50)
    for seed in range(3):
        sampled = np.asarray(sample_anchors(jax.random.key(seed), labels, 256, 0.5))
        assert sampled[:10].all() and sampled[10:510].sum() == 246 and not sampled[510:].any()
    many = jnp.asarray([1] * 300 + [0] * 300)
    sampled = np.asarray(sample_anchors(jax.random.key(0), many, 256, 0.5))
    assert sampled[:300].sum() == 128 and sampled[300:].sum() == 128


def _tiny_detector(**box_head):
    detector = dict(image_size=32, scales=(1.25, 2.25), ratios=(0.5, 1.0, 2.0), head_width=8, **box_head)
    spec = {"backbone": dict(layout="18", width=8, groups=4, num_stages=2), "detector": detector}
    return build_detector(spec, rngs=nnx.Rngs(0))


def _detection_batch(rows=8, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0.05, 0.6, size=(rows, 3, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.1, 0.35, size=(rows, 3, 2))], axis=-1).astype(np.float32)
    return {
        "image": jnp.asarray(rng.normal(size=(rows, 32, 32, 3)), jnp.float32),
        "gt_boxes": jnp.asarray(boxes),
        "gt_mask": jnp.asarray(np.arange(3)[None] < rng.integers(1, 4, size=(rows, 1))),
        "gt_labels": jnp.asarray(rng.integers(-1, 5, size=(rows, 3)), jnp.int32),  # -1: class unknown
    }


def test_rpn_loss_is_the_formula_by_hand():
    model, batch = _tiny_detector(), _detection_batch(rows=2)
    out = model(batch)
    anchors = jnp.asarray(model.anchors)
    loss, metrics = rpn_loss(
        out["objectness"], out["deltas"], batch["gt_boxes"], batch["gt_mask"], jax.random.key(5),
        anchors=anchors, image_size=32, per_image=16, positive_fraction=0.5,
    )  # fmt: skip
    bce, l1, count = 0.0, 0.0, 0
    keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(5), r))(jnp.arange(2))
    for row in range(2):
        labels, matched = anchor_labels(anchors, batch["gt_boxes"][row] * 32, batch["gt_mask"][row])
        sampled = np.asarray(sample_anchors(keys[row], labels, 16, 0.5))
        labels, logits = np.asarray(labels), np.asarray(out["objectness"][row], np.float64)
        target = encode_boxes(anchors, matched)
        for a in np.flatnonzero(sampled):
            p = 1 / (1 + np.exp(-logits[a]))
            bce -= np.log(p) if labels[a] == 1 else np.log(1 - p)
            if labels[a] == 1:
                diff = np.abs(np.asarray(out["deltas"][row, a]) - np.asarray(target[a]))
                l1 += np.sum(np.where(diff < 1 / 9, 0.5 * diff**2 * 9, diff - 0.5 / 9))
        count += sampled.sum()
    np.testing.assert_allclose(float(metrics["rpn/objectness_loss"]), bce / count, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["rpn/box_loss"]), l1 / count, rtol=1e-4)
    np.testing.assert_allclose(float(loss), (bce + l1) / count, rtol=1e-4)


def test_the_rpn_objective_on_8_devices_equals_one_device():
    m1, m8 = objective_on_one_and_eight_devices(_tiny_detector(), _detection_batch(16), {"rpn": {"per_image": 32}})
    for name in ("loss", "rpn/objectness_loss", "rpn/box_loss", "rpn/positives", "rpn/accuracy"):
        np.testing.assert_allclose(float(m8[name]), float(m1[name]), rtol=1e-5, err_msg=name)


def test_region_classes_by_the_overlap_threshold_and_the_best_box():
    gt = jnp.asarray([[0.0, 0, 10, 10], [20.0, 20, 30, 30], [40.0, 40, 50, 50], [60.0, 60, 64, 64]])
    gt_mask, gt_labels = jnp.asarray([True, True, True, False]), jnp.asarray([3, 0, -1, 7])
    regions = jnp.asarray([
        [0.0, 0, 10, 10],  # box 0 exactly: class 3 -> 4
        [0.0, 0, 10, 5],  # IoU 0.5 with box 0: an object
        [0.0, 0, 10, 4.9],  # IoU 0.49: background
        [21.0, 20, 30, 30],  # box 1 (class 0) -> 1
        [40.0, 40, 50, 50],  # box 2, class unknown: not scored
        [0.0, 0, 10, 10],  # an invalid region: not scored
        [60.0, 60, 64, 64],  # only the padded box 3: background
    ])  # fmt: skip
    valid = jnp.asarray([True, True, True, True, True, False, True])
    classes = roi_classes(regions, valid, gt, gt_mask, gt_labels)
    np.testing.assert_array_equal(classes, [4, 4, 0, 1, -1, -1, 0])


def test_box_head_loss_is_the_cross_entropy_over_the_scored_regions_by_hand():
    model, batch = _tiny_detector(box_head=16, num_classes=5), _detection_batch(rows=2)
    out = model(batch)
    assert out["roi_logits"].shape == (2, 3 + 10, 6)  # every ground-truth box, then the proposals
    loss, metrics = box_head_loss(
        out["roi_logits"], out["roi_boxes"], out["roi_valid"], batch["gt_boxes"], batch["gt_mask"],
        batch["gt_labels"], image_size=32,
    )  # fmt: skip
    total, count, hits = 0.0, 0, 0
    for row in range(2):
        gt = np.asarray(batch["gt_boxes"][row]) * 32
        for r in range(out["roi_logits"].shape[1]):
            if not out["roi_valid"][row, r]:
                continue
            ious = [float(box_iou(out["roi_boxes"][row, r][None], jnp.asarray(g)[None])[0, 0]) for g in gt]
            ious = [iou if batch["gt_mask"][row, g] else -1 for g, iou in enumerate(ious)]
            best = int(np.argmax(ious))
            label = int(batch["gt_labels"][row, best])
            target = (label + 1 if label >= 0 else None) if ious[best] >= 0.5 else 0
            if target is None:
                continue
            logits = np.asarray(out["roi_logits"][row, r], np.float64)
            total -= logits[target] - np.log(np.sum(np.exp(logits)))
            count, hits = count + 1, hits + int(np.argmax(logits) == target)
    assert count > 6
    np.testing.assert_allclose(float(loss), total / count, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["box_head/accuracy"]), hits / count, rtol=1e-6)


def test_the_box_head_loss_trains_the_box_head_alone():
    """The proposals are the box head's inputs, not its outputs, and the first stage's features
    are read as they are: its loss moves neither the RPN nor the backbone."""
    model, batch = _tiny_detector(box_head=16, num_classes=5), _detection_batch(rows=2)

    def loss(model):
        out = model(batch)
        rows = (out["roi_logits"], out["roi_boxes"], out["roi_valid"])
        return box_head_loss(*rows, batch["gt_boxes"], batch["gt_mask"], batch["gt_labels"], image_size=32)[0]

    grads = nnx.grad(loss)(model)
    first_stage = jax.tree.leaves(nnx.state(grads.rpn)) + jax.tree.leaves(nnx.state(grads.backbone))
    assert first_stage and all(float(jnp.abs(g).max()) == 0.0 for g in first_stage)
    assert float(jnp.abs(grads.box_head.fc1.kernel[...]).max()) > 0


def test_regions_are_the_box_heads_features_of_the_confident_proposals():
    model = _tiny_detector(box_head=16, num_classes=5)
    image = _detection_batch(rows=2)["image"]
    found = model.regions(image)
    feature_map, objectness, deltas = model._outputs(image)
    boxes, _, _ = model._proposals_from(objectness, deltas)
    want = model.box_head.features(model._bins(feature_map, image, boxes))
    mask = np.asarray(found["region_mask"])
    assert found["regions"].shape == (2, 10, 16) and mask[:, 0].all()
    np.testing.assert_allclose(np.asarray(found["regions"])[mask], np.asarray(want)[mask], rtol=1e-5, atol=1e-6)
    assert not np.asarray(found["regions"])[~mask].any()


def test_box_accuracy_counts_the_boxes_named_by_their_class():
    """A box head that always says class 2 (logit index 3): right on the box of class 2, wrong on
    the box of class 0, and the box of unknown class is not counted."""
    model = _tiny_detector(box_head=16, num_classes=5)
    model.box_head.classes.kernel[...] = jnp.zeros_like(model.box_head.classes.kernel[...])
    model.box_head.classes.bias[...] = jnp.asarray([0.0, 0, 0, 5, 0, 0])
    scorer = ProposalScorer(model)
    images = np.asarray(_detection_batch(rows=2)["image"])
    boxes = [np.array([[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9]]), np.array([[0.2, 0.2, 0.6, 0.6]])]
    assert scorer.box_hits(images, boxes, [np.array([2, 0]), np.array([-1])]) == (1, 2)
    assert box_accuracy(1, 2) == {"proposals/box_accuracy": 0.5} and box_accuracy(0, 0) == {}


def test_the_box_head_objective_on_8_devices_equals_one_device():
    model, batch = _tiny_detector(box_head=16, num_classes=5), _detection_batch(16)
    m1, m8 = objective_on_one_and_eight_devices(model, batch, {"rpn": {"per_image": 32}, "box_head": {}})
    for name in ("loss", "box_head/loss", "box_head/accuracy", "box_head/objects", "rpn/objectness_loss"):
        np.testing.assert_allclose(float(m8[name]), float(m1[name]), rtol=1e-5, err_msg=name)


def test_a_box_head_objective_needs_a_box_head_and_a_box_head_needs_its_objective(tiny_shapes_dir):
    with pytest.raises(ConfigError, match="set model.detector.box_head and num_classes"):
        _config("detector_shapes", tiny_shapes_dir, "--config.model.detector.box_head=0")
    from vlpjax.config import load_recipe, validate

    rpn_only = load_recipe(os.path.join(ROOT, "configs", "detector_shapes.py:tiny"))
    rpn_only.objectives = {"rpn": rpn_only.objectives.rpn.to_dict()}
    with pytest.raises(ConfigError, match="the box head would stay random"):
        validate(rpn_only)


def test_box_targets_pad_labels_and_the_box_head_checks_them():
    targets = box_targets(np.array([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]]), np.array([7, 0]), 3)
    np.testing.assert_array_equal(targets["gt_labels"], [7, 0, -1])
    np.testing.assert_array_equal(targets["gt_mask"], [True, True, False])
    assert box_labels_of({"boxes": np.zeros((2, 4))}, 2).tolist() == [-1, -1]  # a dataset without labels
    with pytest.raises(InvalidInput, match="2 boxes but 1 labels"):
        box_labels_of({"labels": np.array([3])}, 2)
    check_box_labels(np.array([7, 0]), 0)  # no box head: nothing to check
    check_box_labels(np.array([7, 0]), 8)
    with pytest.raises(InvalidInput, match="class 7, outside model.detector.num_classes=7"):
        check_box_labels(np.array([7, 0]), 7)  # classes 0..6
    with pytest.raises(InvalidInput, match="rows have no `labels`"):
        check_box_labels(np.array([-1, -1]), 5)


def test_proposal_recall_and_mean_iou_by_hand():
    gt = np.array([[0.0, 0, 10, 10], [20.0, 20, 30, 30], [50.0, 50, 60, 60]])
    proposals = np.array([[0.0, 0, 10, 12], [20.0, 20, 30, 40], [np.nan, 0, 1, 1], [50.0, 50, 60, 60]])
    valid = np.array([True, True, True, False])  # the exact match of box 2 is padding
    overlaps = best_overlaps(proposals, valid, gt)
    np.testing.assert_allclose(overlaps, [100 / 120, 0.5, 0.0], rtol=1e-6)
    metrics = proposal_metrics(overlaps, 0.5)
    assert metrics["proposals/recall"] == pytest.approx(2 / 3)
    assert metrics["proposals/mean_iou"] == pytest.approx((100 / 120 + 0.5) / 2)


def test_detector_recipe_trains_and_reports_proposal_recall(tiny_shapes_dir, tmp_path):
    metrics = train(_config("detector_shapes", tiny_shapes_dir, "--config.train.steps=6"), str(tmp_path / "d"))
    assert 0.0 <= metrics["proposals/recall"] <= 1.0 and metrics["proposals/boxes"] > 0
    assert 0.0 <= metrics["proposals/box_accuracy"] <= 1.0
    regions = Detector.regions(trained_model(_config("detector_shapes", tiny_shapes_dir), str(tmp_path / "d"))[0],
                               jnp.zeros((2, 32, 32, 3)))  # fmt: skip
    assert regions["regions"].shape == (2, 10, 128) and regions["boxes"].shape == (2, 10, 4)  # the box head's
    assert regions["region_mask"][:, 0].all()  # the best proposal always counts


def test_uniter_detector_reads_a_frozen_detector_run(tiny_shapes_dir, tmp_path):
    train(_config("detector_shapes", tiny_shapes_dir, "--config.train.steps=2"), str(tmp_path / "det"))
    saved, _ = checkpoints.restore_params(str(tmp_path / "det"))
    detector = {path_string(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(saved["params"])}
    config = _config(
        "uniter_detector", tiny_shapes_dir, "--config.train.steps=2", f"--config.init.checkpoint={tmp_path / 'det'}"
    )
    train(config, str(tmp_path / "uniter"))
    model, _ = trained_model(config, str(tmp_path / "uniter"))
    # Every detector weight (backbone, RPN, box head) loaded under img/detector/, and still the
    # same after training.
    assert any(p.startswith("box_head/") for p in detector)
    for path, value in detector.items():
        np.testing.assert_array_equal(np.asarray(variable_at(model.img.detector, tuple(_keys(path)))[...]), value)
    bad = _config("uniter_detector", tiny_shapes_dir, f"--config.init.checkpoint={tmp_path / 'det'}",
                  "--config.init.rename=(('img/detector/', 'detector/'),)")  # fmt: skip
    with pytest.raises(InvalidInput, match="has no parameter 'detector/backbone/.*the model's 'img/detector/backbone/"):
        train(bad, str(tmp_path / "bad"))
    with pytest.raises(ConfigError, match="init.rename must be"):
        _config("uniter_detector", tiny_shapes_dir, "--config.init.rename=('img/detector/', '')")


def _keys(path: str):
    return [int(part) if part.isdigit() else part for part in path.split("/")]


def test_detection_rows_keep_each_box_on_its_object_through_the_flip(tiny_shapes_dir):
    """The pixels inside every target box differ from the background, flipped or not."""
    config = _config("detector_shapes", tiny_shapes_dir)
    source = load_dataset(config.data).as_data_source()["train"]
    pipeline = PipelineConfig(
        batch_size=4, image_size=32, text_len=8, task="detection", flip=True, max_regions=3, box_classes=32
    )
    transform = TrainTransform(pipeline, tokenizer=None)
    flipped_any = False
    for seed in range(12):
        example = source[seed]
        row = transform(example, np.random.default_rng(seed))
        flipped_any |= not np.allclose(row["gt_boxes"][row["gt_mask"]], boxes_of(example))
        # Each box keeps its class (the shapes are mirror-symmetric: a flip changes no class).
        np.testing.assert_array_equal(row["gt_labels"][row["gt_mask"]], example["labels"])
        background = row["image"][0, 0]  # a corner: the scenes' background
        for box in row["gt_boxes"][row["gt_mask"]] * 32:
            x1, y1, x2, y2 = np.round(box).astype(int)
            inside = row["image"][y1:y2, x1:x2].reshape(-1, 3)
            assert np.abs(inside - background).max() > 0.1, (seed, box)
    assert flipped_any
