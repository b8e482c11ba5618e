"""RoIAlign (He et al. 2017) with `aligned=True` semantics, as torchvision computes it.

A box in image pixels is scaled to the feature map (`spatial_scale` = 1 / stride) and shifted
by half a cell, so that a feature's value sits at its cell's centre. The box is cut into P x P
bins; each bin averages `sampling_ratio` x `sampling_ratio` bilinear samples at evenly spaced
points. A sample more than one cell outside the map reads 0; one within a cell of the border
reads the border (coordinates clamped at 0 and at the last row / column).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _bilinear(features: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
    """features [H, W, C] at points y, x of any shape -> [..., C], torchvision's border rules."""
    h, w = features.shape[:2]
    outside = (y < -1.0) | (y > h) | (x < -1.0) | (x > w)
    y, x = jnp.maximum(y, 0.0), jnp.maximum(x, 0.0)
    y_low = jnp.minimum(jnp.floor(y).astype(jnp.int32), h - 1)
    x_low = jnp.minimum(jnp.floor(x).astype(jnp.int32), w - 1)
    y = jnp.where(y_low >= h - 1, y_low.astype(y.dtype), y)
    x = jnp.where(x_low >= w - 1, x_low.astype(x.dtype), x)
    y_high, x_high = jnp.minimum(y_low + 1, h - 1), jnp.minimum(x_low + 1, w - 1)
    ly, lx = (y - y_low)[..., None], (x - x_low)[..., None]
    value = (
        (1 - ly) * (1 - lx) * features[y_low, x_low]
        + (1 - ly) * lx * features[y_low, x_high]
        + ly * (1 - lx) * features[y_high, x_low]
        + ly * lx * features[y_high, x_high]
    )
    return jnp.where(outside[..., None], 0.0, value)


def roi_align(
    features: jax.Array, boxes: jax.Array, output_size: int, spatial_scale: float, sampling_ratio: int = 2
) -> jax.Array:
    """features [H, W, C] of one image, boxes [R, 4] (x1, y1, x2, y2) in image pixels ->
    [R, P, P, C]."""
    if sampling_ratio < 1:
        raise ValueError("roi_align needs a fixed sampling_ratio >= 1 (the adaptive one has no static shape)")
    p, g = output_size, sampling_ratio
    start = boxes[:, :2] * spatial_scale - 0.5  # (x, y)
    size = boxes[:, 2:] * spatial_scale - 0.5 - start
    # Sample k of bin j along an axis sits at start + (j + (k + 0.5) / g) * size / p.
    steps = (jnp.arange(p)[:, None] + (jnp.arange(g)[None, :] + 0.5) / g).reshape(-1) / p  # [P*g]
    xs = start[:, 0, None] + steps[None] * size[:, 0, None]  # [R, P*g]
    ys = start[:, 1, None] + steps[None] * size[:, 1, None]
    samples = _bilinear(features, ys[:, :, None], xs[:, None, :])  # [R, P*g (y), P*g (x), C]
    r, c = boxes.shape[0], features.shape[-1]
    return samples.reshape(r, p, g, p, g, c).mean(axis=(2, 4))
