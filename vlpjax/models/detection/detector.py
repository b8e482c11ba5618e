"""A region proposal network on a ResNet grid (Faster R-CNN's first stage), and the regions it
gives a sparse-image model.

`Detector(batch)` scores every anchor of the backbone's map (objectness logit and box deltas);
the `rpn` objective trains both against the ground-truth boxes. `proposals` decodes the deltas,
clips the boxes to the image, and keeps the best `top_k` after NMS. `regions` adds each
confident proposal's features in the batch keys `RegionEncoder` reads: `regions`, `boxes`
(normalised), `region_mask`. A region's RoIAlign bins (P x P bins of the map and of the pixels,
flattened) are its features, or, with `box_head` > 0, they feed Faster R-CNN's second stage: a
two-layer box head whose output is the feature, trained (objective `box_head`) to name the
object class of the ground-truth box a region overlaps, or background.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlpjax.models.detection.anchors import clip_boxes, decode_boxes, grid_anchors
from vlpjax.models.detection.nms import nms
from vlpjax.models.detection.roi_align import roi_align
from vlpjax.models.layers import Encoded, dense, with_axes
from vlpjax.models.regions import RegionConfig, RegionEncoder
from vlpjax.models.resnet import ResNet, ResNetConfig

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    image_size: int = 64
    scales: tuple[float, ...] = (1.25, 2.25)  # anchor sides in strides
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # anchor h / w
    head_width: int = 128  # the RPN's 3x3 convolution
    pre_nms: int = 100  # best-scored boxes NMS looks at
    nms_threshold: float = 0.7
    top_k: int = 10  # proposals kept per image
    roi_size: int = 4  # RoIAlign bins per side
    sampling_ratio: int = 2
    # Regions: the proposals scored at least this probability of being an object, each with
    # its RoIAlign bins of the feature map (map_bins) and of the pixels themselves (pixel_bins),
    # which hold the colours an objectness-trained map need not keep.
    min_score: float = 0.5
    map_bins: bool = True
    pixel_bins: bool = True
    box_head: int = 0  # width of the second stage's two layers; 0: none, the bins are the features
    num_classes: int = 0  # object classes the box head names (plus background)

    @property
    def anchors_per_cell(self) -> int:
        return len(self.scales) * len(self.ratios)


def _conv(cin: int, cout: int, k: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        kernel_size=(k, k),
        padding=((k // 2, k // 2),) * 2,  # a tuple: the module stays hashable (jit static)
        param_dtype=jnp.float32,
        kernel_init=with_axes(nnx.initializers.normal(0.01), (None, None, "conv_in", "conv_out")),
        bias_init=with_axes(nnx.initializers.zeros_init(), ("conv_out",)),
        rngs=rngs,
    )


class RPNHead(nnx.Module):
    """A shared 3x3 convolution, then per anchor of each cell an objectness logit and 4 deltas."""

    def __init__(self, channels: int, width: int, anchors_per_cell: int, *, rngs: nnx.Rngs):
        self.conv = _conv(channels, width, 3, rngs)
        self.objectness = _conv(width, anchors_per_cell, 1, rngs)
        self.deltas = _conv(width, 4 * anchors_per_cell, 1, rngs)

    def __call__(self, feature_map: Array) -> tuple[Array, Array]:
        """[B, H, W, C] -> objectness [B, H*W*A], deltas [B, H*W*A, 4] (the anchors' order)."""
        x = jax.nn.relu(self.conv(feature_map))
        b = x.shape[0]
        return self.objectness(x).reshape(b, -1).astype(jnp.float32), self.deltas(x).reshape(b, -1, 4).astype(
            jnp.float32
        )


class BoxHead(nnx.Module):
    """Faster R-CNN's second stage without box refinement: two ReLU layers over a region's
    RoIAlign bins (its feature), then logits over background and the object classes."""

    def __init__(self, bins: int, width: int, num_classes: int, *, rngs: nnx.Rngs):
        self.fc1 = dense(bins, width, ("embed", "mlp"), rngs=rngs)
        self.fc2 = dense(width, width, ("mlp", "embed"), rngs=rngs)
        self.classes = dense(width, num_classes + 1, ("embed", None), rngs=rngs)

    def features(self, bins: Array) -> Array:
        return jax.nn.relu(self.fc2(jax.nn.relu(self.fc1(bins))))

    def __call__(self, bins: Array) -> Array:
        """[..., bins] -> class logits [..., 1 + num_classes]; class 0 is background."""
        return self.classes(self.features(bins)).astype(jnp.float32)


class Detector(nnx.Module):
    input_keys = ("image",)

    def __init__(self, backbone: ResNetConfig, config: DetectorConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.backbone = ResNet(backbone, rngs=rngs)
        stride = backbone.stride
        if config.image_size % stride:
            raise ValueError(f"detector image_size {config.image_size} is not a multiple of the stride {stride}")
        self.stride, self.grid = stride, config.image_size // stride
        self.rpn = RPNHead(backbone.out_channels, config.head_width, config.anchors_per_cell, rngs=rngs)
        if not (config.map_bins or config.pixel_bins):
            raise ValueError("detector regions need map_bins or pixel_bins (or both)")
        channels = (backbone.out_channels if config.map_bins else 0) + (3 if config.pixel_bins else 0)
        bins = config.roi_size**2 * channels
        if config.box_head and config.num_classes < 1:
            raise ValueError("a detector's box_head needs num_classes (the object classes it names)")
        self.box_head = BoxHead(bins, config.box_head, config.num_classes, rngs=rngs) if config.box_head else None
        self.region_dim = config.box_head or bins

    @property
    def anchors(self) -> np.ndarray:
        """[H*W*A, 4] in pixels: the order of the RPN's outputs."""
        c = self.config
        return grid_anchors(self.grid, self.grid, self.stride, c.scales, c.ratios)

    def _outputs(self, image: Array) -> tuple[Array, Array, Array]:
        if image.shape[1:3] != (self.config.image_size,) * 2:
            raise ValueError(f"the detector takes {self.config.image_size} px images, got {image.shape[1:3]}")
        feature_map = self.backbone.feature_map(image)
        return (feature_map, *self.rpn(feature_map))

    def __call__(self, batch: Mapping[str, Array]) -> dict[str, Array]:
        """The RPN's outputs; with a box head and ground truth in the batch, also the class logits
        `roi_logits` of the regions the box head learns from, `roi_boxes` (pixels) and
        `roi_valid`: every ground-truth box and the current proposals (no gradient through them)."""
        image = batch["image"]
        feature_map, objectness, deltas = self._outputs(image)
        out = {"objectness": objectness, "deltas": deltas}
        if self.box_head is None or "gt_boxes" not in batch:
            return out
        proposals, _, valid = self._proposals_from(objectness, deltas)
        boxes = jnp.concatenate([batch["gt_boxes"].astype(jnp.float32) * self.config.image_size, proposals], axis=1)
        # One stop-gradient on the bins: the box head learns on the first stage's features and
        # boxes without changing them. Sharing the backbone left the RPN less sure of its objects
        # (its confident proposals covered 93% of the boxes of 200 test images, against 99.4%
        # this way), and a region model reads those.
        out["roi_logits"] = self.box_head(jax.lax.stop_gradient(self._bins(feature_map, image, boxes)))
        out["roi_boxes"], out["roi_valid"] = boxes, jnp.concatenate([batch["gt_mask"].astype(bool), valid], axis=1)
        return out

    def classify(self, image: Array, boxes: Array) -> Array:
        """The box head's class logits [B, N, 1 + num_classes] of given boxes [B, N, 4] (pixels)."""
        feature_map, _, _ = self._outputs(image)
        return self.box_head(self._bins(feature_map, image, boxes))

    def _bins(self, feature_map: Array, image: Array, boxes: Array) -> Array:
        """[B, N, bins]: each box's RoIAlign bins of the map and/or the pixels, flattened."""
        c = self.config

        def bins(source, scale):
            pooled = jax.vmap(lambda f, b: roi_align(f, b, c.roi_size, scale, c.sampling_ratio))(source, boxes)
            return pooled.reshape(*pooled.shape[:2], -1)

        features = [bins(feature_map.astype(jnp.float32), 1 / self.stride)] if c.map_bins else []
        if c.pixel_bins:
            features.append(bins(image.astype(jnp.float32), 1.0))
        return jnp.concatenate(features, axis=-1)

    def _proposals_from(self, objectness: Array, deltas: Array) -> tuple[Array, Array, Array]:
        c, size = self.config, self.config.image_size
        boxes = clip_boxes(decode_boxes(jnp.asarray(self.anchors), deltas), size, size)
        pre = min(c.pre_nms, boxes.shape[1])

        def one_image(boxes, scores):
            best = jax.lax.top_k(scores, pre)[1]
            keep, valid = nms(boxes[best], scores[best], c.nms_threshold, c.top_k)
            picked = best[jnp.maximum(keep, 0)]
            return boxes[picked], scores[picked], valid

        return jax.vmap(one_image)(boxes, objectness)

    def proposals(self, batch: Mapping[str, Array]) -> tuple[Array, Array, Array]:
        """(boxes [B, top_k, 4] in pixels, objectness [B, top_k], valid [B, top_k])."""
        _, objectness, deltas = self._outputs(batch["image"])
        return self._proposals_from(objectness, deltas)

    def regions(self, image: Array) -> dict[str, Array]:
        """`regions` [B, top_k, region_dim]: each proposal's features (its RoIAlign bins, or the
        box head's output); `boxes` [B, top_k, 4] normalised; `region_mask` [B, top_k]: the
        proposals NMS kept whose objectness probability reaches `min_score` (and the best one)."""
        c = self.config
        feature_map, objectness, deltas = self._outputs(image)
        boxes, scores, valid = self._proposals_from(objectness, deltas)
        # The best proposal always counts: an image never goes without a region to attend to.
        valid = valid & (jax.nn.sigmoid(scores) >= c.min_score).at[:, 0].set(True)
        features = self._bins(feature_map, image, boxes)
        if self.box_head is not None:
            features = self.box_head.features(features)
        features = jnp.where(valid[..., None], features, 0.0)
        return {"regions": features, "boxes": boxes / c.image_size, "region_mask": valid}


class DetectorRegionEncoder(nnx.Module):
    """Pixels -> a detector's proposals and their features -> a region encoder (UNITER on a
    detector's regions). The detector is read, never trained from here: its outputs carry no
    gradient (freeze its parameters too, `rules.frozen`, so they hold no optimizer state)."""

    input_keys = ("image",)

    def __init__(self, detector: Detector, regions: RegionEncoder):
        if regions.config.feature_dim != detector.region_dim:
            raise ValueError(
                f"the region encoder takes {regions.config.feature_dim} features, the detector gives "
                f"{detector.region_dim} (its box_head, or roi_size**2 x (backbone channels with map_bins + 3 "
                "with pixel_bins))"
            )
        self.detector, self.regions = detector, regions
        self.out_dim = regions.out_dim

    def __call__(self, image: Array) -> Encoded:
        found = jax.lax.stop_gradient(self.detector.regions(image))
        return self.regions(found["regions"], found["boxes"], found["region_mask"])


def build_detector(spec: Mapping[str, Any], *, rngs: nnx.Rngs) -> Detector:
    """{'backbone': {ResNetConfig fields}, 'detector': {DetectorConfig fields}}."""
    fields = dict(spec.get("detector", {}))
    for key in ("scales", "ratios"):
        if key in fields:
            fields[key] = tuple(fields[key])
    return Detector(ResNetConfig(**spec.get("backbone", {})), DetectorConfig(**fields), rngs=rngs)


def build_detector_regions(spec: Mapping[str, Any], *, rngs: nnx.Rngs) -> DetectorRegionEncoder:
    """{'backbone', 'detector' (as build_detector), 'regions': {RegionConfig fields but feature_dim}}
    plus the scale switches (dtype reaches both, the stack switches the region encoder)."""
    spec = dict(spec)
    switches = {k: spec.pop(k) for k in ("dtype", "attention", "remat", "scan_layers") if k in spec}
    backbone = {**spec.get("backbone", {}), **{k: v for k, v in switches.items() if k == "dtype"}}
    detector = build_detector({**spec, "backbone": backbone}, rngs=rngs)
    region_fields = {"feature_dim": detector.region_dim, **spec.get("regions", {}), **switches}
    regions = RegionEncoder(RegionConfig(**region_fields), rngs=rngs)
    return DetectorRegionEncoder(detector, regions)
