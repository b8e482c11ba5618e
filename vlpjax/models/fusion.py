"""Fusion encoders: where image and text tokens meet.

- `MergedAttentionFusion` (single stream: ViLT, UNITER, VisualBERT): both token sets, each with
  a modality type embedding, are concatenated and run through one transformer.
- `CoAttentionFusion` (dual stream: METER, LXMERT): each layer runs self-attention, then
  cross-attention to the other stream's previous-layer output, then an FFN, with separate
  weights per stream.
- The ALBEF layout (text-only layers, then layers with cross-attention to the image) lives in
  `BertEncoder` (`cross_attention_from`); see `text_layers` / `fusion_layers` there.

Inputs are already-encoded token sequences with boolean masks; outputs keep both streams.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from vlpjax.models.attention import Mask, key_padding
from vlpjax.models.layers import PreLNBlock, dense, layer_norm, with_axes
from vlpjax.models.stack import run_stack


class Fused(NamedTuple):
    text: jax.Array  # [B, Lt, D]
    image: jax.Array  # [B, Li, D]
    pooled: jax.Array  # [B, D]: the first text token ([CLS])


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    width: int = 768
    depth: int = 6
    num_heads: int = 12
    mlp_dim: int = 3072
    text_dim: int | None = None  # input widths; a projection is added where they differ
    image_dim: int | None = None
    dtype: str = "float32"
    attention: str = "xla"  # the scale switches: see vlpjax.models.attention and .stack
    remat: str = "none"
    scan_layers: bool = False


class InputProjections(nnx.Module):
    """Bring text and image tokens to the fusion width; an identity where they already match."""

    def __init__(self, config: FusionConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.dtype)

        def projection(in_dim):
            return (
                None
                if in_dim in (None, config.width)
                else dense(in_dim, config.width, (None, "embed"), dtype=dtype, rngs=rngs)
            )

        self.text, self.image = projection(config.text_dim), projection(config.image_dim)

    def __call__(self, text: jax.Array, image: jax.Array) -> tuple[jax.Array, jax.Array]:
        t = text if self.text is None else self.text(text)
        v = image if self.image is None else self.image(image)
        return t, v.astype(t.dtype)


class MergedAttentionFusion(nnx.Module):
    def __init__(self, config: FusionConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        dtype = jnp.dtype(c.dtype)
        self.inputs = InputProjections(c, rngs=rngs)
        self.type_embed = nnx.Param(
            with_axes(nnx.initializers.normal(0.02), (None, "embed"))(rngs.params(), (2, c.width))
        )
        self.blocks = nnx.List(
            [
                PreLNBlock(c.width, c.num_heads, c.mlp_dim, dtype=dtype, attention=c.attention, rngs=rngs)
                for _ in range(c.depth)
            ]
        )
        self.ln_final = layer_norm(c.width, rngs=rngs)

    def __call__(self, text: jax.Array, text_mask: jax.Array, image: jax.Array, image_mask: jax.Array) -> Fused:
        types = self.type_embed[...]
        t, v = self.inputs(text, image)
        t, v = t + types[0].astype(t.dtype), v + types[1].astype(t.dtype)
        x = jnp.concatenate([t, v], axis=1)
        # Text padding sits between the two streams, so this mask is no prefix: it reaches a fused
        # kernel as a bias.
        keys = jnp.concatenate([text_mask.astype(bool), image_mask.astype(bool)], axis=1)
        mask, c = Mask(pairs=keys[:, None, None, :]), self.config
        x = run_stack(self.blocks, x, lambda block, x: block(x, mask=mask), remat=c.remat, scan=c.scan_layers)
        x = self.ln_final(x)
        lt = text.shape[1]
        return Fused(text=x[:, :lt], image=x[:, lt:], pooled=x[:, 0])


class CoAttentionFusion(nnx.Module):
    def __init__(self, config: FusionConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        dtype = jnp.dtype(c.dtype)
        self.inputs = InputProjections(c, rngs=rngs)

        def stream():
            return nnx.List(
                [
                    PreLNBlock(
                        c.width,
                        c.num_heads,
                        c.mlp_dim,
                        context_dim=c.width,
                        dtype=dtype,
                        attention=c.attention,
                        rngs=rngs,
                    )
                    for _ in range(c.depth)
                ]
            )

        self.text_blocks = stream()
        self.image_blocks = stream()
        self.ln_text = layer_norm(c.width, rngs=rngs)
        self.ln_image = layer_norm(c.width, rngs=rngs)

    def __call__(self, text: jax.Array, text_mask: jax.Array, image: jax.Array, image_mask: jax.Array) -> Fused:
        t, v = self.inputs(text, image)
        t_mask, v_mask = key_padding(text_mask), key_padding(image_mask)

        def layer(blocks, streams):
            (text_block, image_block), (t, v) = blocks, streams
            # Both streams read the other's previous-layer output.
            return (
                text_block(t, mask=t_mask, context=v, context_mask=v_mask),
                image_block(v, mask=v_mask, context=t, context_mask=t_mask),
            )

        c = self.config
        layers = list(zip(self.text_blocks, self.image_blocks, strict=True))
        t, v = run_stack(layers, (t, v), layer, remat=c.remat, scan=c.scan_layers)
        t, v = self.ln_text(t), self.ln_image(v)
        return Fused(text=t, image=v, pooled=t[:, 0])
