"""Region-feature encoder for detector outputs (the sparse family: Faster R-CNN / BUTD features).

Each region is embedded as in UNITER: LN(W_f f) + LN(W_p p) + a modality type embedding, then
a LayerNorm, where p is the 7-d box geometry (x1, y1, x2, y2, w, h, w*h). Optional pre-LN blocks
let regions talk to each other before pooling; padded regions are masked out of both.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from vlpjax.models.attention import key_padding
from vlpjax.models.layers import Encoded, PreLNBlock, dense, layer_norm, masked_mean, with_axes
from vlpjax.models.stack import run_stack

GEOMETRY_DIM = 7


@dataclasses.dataclass(frozen=True)
class RegionConfig:
    feature_dim: int = 2048
    width: int = 768
    depth: int = 0
    num_heads: int = 12
    mlp_dim: int = 3072
    dtype: str = "float32"
    attention: str = "xla"  # the scale switches: see vlpjax.models.attention and .stack
    remat: str = "none"
    scan_layers: bool = False


def box_geometry(boxes: jax.Array) -> jax.Array:
    """[..., 4] normalized (x1, y1, x2, y2) -> [..., 7] (x1, y1, x2, y2, w, h, area)."""
    x1, y1, x2, y2 = jnp.moveaxis(boxes, -1, 0)
    w, h = x2 - x1, y2 - y1
    return jnp.stack([x1, y1, x2, y2, w, h, w * h], axis=-1)


class RegionEncoder(nnx.Module):
    input_keys = ("regions", "boxes", "region_mask")

    def __init__(self, config: RegionConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        dtype = jnp.dtype(c.dtype)
        self.out_dim = c.width
        self.feature_proj = dense(c.feature_dim, c.width, (None, "embed"), dtype=dtype, rngs=rngs)
        self.feature_norm = layer_norm(c.width, rngs=rngs)
        self.geometry_proj = dense(GEOMETRY_DIM, c.width, (None, "embed"), dtype=dtype, rngs=rngs)
        self.geometry_norm = layer_norm(c.width, rngs=rngs)
        self.type_embed = nnx.Param(with_axes(nnx.initializers.normal(0.02), ("embed",))(rngs.params(), (c.width,)))
        self.ln_embed = layer_norm(c.width, rngs=rngs)
        self.blocks = nnx.List(
            [
                PreLNBlock(c.width, c.num_heads, c.mlp_dim, dtype=dtype, attention=c.attention, rngs=rngs)
                for _ in range(c.depth)
            ]
        )
        self.ln_final = layer_norm(c.width, rngs=rngs) if c.depth else None

    def __call__(self, regions: jax.Array, boxes: jax.Array, region_mask: jax.Array) -> Encoded:
        """regions [B,R,F], boxes [B,R,4], region_mask [B,R] -> Encoded."""
        if regions.shape[-1] != self.config.feature_dim:
            raise ValueError(
                f"regions have {regions.shape[-1]} features, the encoder expects {self.config.feature_dim}"
            )
        dtype = jnp.dtype(self.config.dtype)
        mask = region_mask.astype(bool)
        x = self.feature_norm(self.feature_proj(regions.astype(dtype)))
        x = x + self.geometry_norm(self.geometry_proj(box_geometry(boxes.astype(jnp.float32)).astype(dtype)))
        x = self.ln_embed(x + self.type_embed[...].astype(x.dtype))
        attn_mask, c = key_padding(mask), self.config
        x = run_stack(self.blocks, x, lambda block, x: block(x, mask=attn_mask), remat=c.remat, scan=c.scan_layers)
        if self.ln_final is not None:
            x = self.ln_final(x)
        return Encoded(tokens=x, pooled=masked_mean(x, mask), mask=mask)
