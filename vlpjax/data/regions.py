"""Region features from known boxes: the sparse image path without a detector.

Each box is pooled to a `grid x grid` patch of mean pixel values (area averaging) and flattened,
so a region's feature says what its pixels look like and `boxes` say where it is: enough for
UNITER-style merged attention over regions on data that ships its boxes (synthetic_shapes).
"""

from __future__ import annotations

import numpy as np


def region_feature_dim(grid: int) -> int:
    return grid * grid * 3


def pooled_box(image: np.ndarray, box: np.ndarray, grid: int) -> np.ndarray:
    """Mean of each cell of a `grid x grid` split of the box; image [H,W,3] float, box normalised."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = box
    top, bottom = int(np.floor(y1 * h)), max(int(np.ceil(y2 * h)), int(np.floor(y1 * h)) + 1)
    left, right = int(np.floor(x1 * w)), max(int(np.ceil(x2 * w)), int(np.floor(x1 * w)) + 1)
    crop = image[top:bottom, left:right]
    rows = np.array_split(np.arange(crop.shape[0]), grid)
    cols = np.array_split(np.arange(crop.shape[1]), grid)
    cells = [
        crop[r][:, c].mean(axis=(0, 1)) if len(r) and len(c) else np.zeros(3, image.dtype) for r in rows for c in cols
    ]
    return np.concatenate(cells).astype(np.float32)


def flip_boxes(boxes: np.ndarray) -> np.ndarray:
    """Boxes of the horizontally flipped image."""
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = 1.0 - boxes[:, 2], 1.0 - boxes[:, 0]
    return flipped


def region_arrays(image: np.ndarray, boxes: np.ndarray, grid: int, max_regions: int) -> dict[str, np.ndarray]:
    """`regions` [R, grid*grid*3], `boxes` [R, 4], `region_mask` [R], padded to `max_regions`."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(boxes) > max_regions:
        raise ValueError(f"an image has {len(boxes)} boxes, more than data.max_regions={max_regions}")
    regions = np.zeros((max_regions, region_feature_dim(grid)), np.float32)
    padded = np.zeros((max_regions, 4), np.float32)
    mask = np.zeros(max_regions, bool)
    for i, box in enumerate(boxes):
        regions[i], padded[i], mask[i] = pooled_box(image, box, grid), box, True
    return {"regions": regions, "boxes": padded, "region_mask": mask}
