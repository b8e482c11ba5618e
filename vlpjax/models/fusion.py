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

from vlpjax.models.layers import PreLNBlock, dense, key_padding_mask, layer_norm, with_axes


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


def _input_projection(in_dim: int | None, width: int, dtype, rngs: nnx.Rngs):
    return None if in_dim in (None, width) else dense(in_dim, width, (None, "embed"), dtype=dtype, rngs=rngs)


def _project(layer, x):
    return x if layer is None else layer(x)


class MergedAttentionFusion(nnx.Module):
    def __init__(self, config: FusionConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        dtype = jnp.dtype(c.dtype)
        self.text_in = _input_projection(c.text_dim, c.width, dtype, rngs)
        self.image_in = _input_projection(c.image_dim, c.width, dtype, rngs)
        self.type_embed = nnx.Param(with_axes(nnx.initializers.normal(0.02), (None, "embed"))(rngs.params(), (2, c.width)))
        self.blocks = nnx.List([PreLNBlock(c.width, c.num_heads, c.mlp_dim, dtype=dtype, rngs=rngs) for _ in range(c.depth)])
        self.ln_final = layer_norm(c.width, rngs=rngs)

    def __call__(self, text: jax.Array, text_mask: jax.Array, image: jax.Array, image_mask: jax.Array) -> Fused:
        types = self.type_embed[...]
        t = _project(self.text_in, text) + types[0].astype(text.dtype)
        v = _project(self.image_in, image).astype(t.dtype) + types[1].astype(t.dtype)
        x = jnp.concatenate([t, v], axis=1)
        mask = key_padding_mask(jnp.concatenate([text_mask.astype(bool), image_mask.astype(bool)], axis=1))
        for block in self.blocks:
            x = block(x, mask=mask)
        x = self.ln_final(x)
        lt = text.shape[1]
        return Fused(text=x[:, :lt], image=x[:, lt:], pooled=x[:, 0])


class CoAttentionFusion(nnx.Module):
    def __init__(self, config: FusionConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        dtype = jnp.dtype(c.dtype)
        self.text_in = _input_projection(c.text_dim, c.width, dtype, rngs)
        self.image_in = _input_projection(c.image_dim, c.width, dtype, rngs)

        def stream():
            return nnx.List(
                [PreLNBlock(c.width, c.num_heads, c.mlp_dim, context_dim=c.width, dtype=dtype, rngs=rngs) for _ in range(c.depth)]
            )

        self.text_blocks = stream()
        self.image_blocks = stream()
        self.ln_text = layer_norm(c.width, rngs=rngs)
        self.ln_image = layer_norm(c.width, rngs=rngs)

    def __call__(self, text: jax.Array, text_mask: jax.Array, image: jax.Array, image_mask: jax.Array) -> Fused:
        t = _project(self.text_in, text)
        v = _project(self.image_in, image).astype(t.dtype)
        t_mask, v_mask = key_padding_mask(text_mask.astype(bool)), key_padding_mask(image_mask.astype(bool))
        for text_block, image_block in zip(self.text_blocks, self.image_blocks):
            # Both streams read the other's previous-layer output.
            t, v = (
                text_block(t, mask=t_mask, context=v, context_mask=v_mask),
                image_block(v, mask=v_mask, context=t, context_mask=t_mask),
            )
        t, v = self.ln_text(t), self.ln_image(v)
        return Fused(text=t, image=v, pooled=t[:, 0])
