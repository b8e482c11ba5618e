"""The composite models a config names, and the builders that make them from config dicts."""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlpjax.models.detection.detector import build_detector_regions
from vlpjax.models.heads import Projection
from vlpjax.models.layers import Encoded
from vlpjax.models.regions import RegionConfig, RegionEncoder
from vlpjax.models.resnet import ResNet, ResNetConfig
from vlpjax.models.t5 import T5Config, T5Encoder
from vlpjax.models.text import BertConfig, BertEncoder, TextTransformer, TextTransformerConfig
from vlpjax.models.vit import ViT, vit_config

CONTRASTIVE_KINDS = ("softmax", "sigmoid")
STACK_SWITCHES = ("attention", "remat", "scan_layers")
MAX_LOGIT_SCALE = 100.0


def _fields(spec: Mapping[str, Any], what: str) -> tuple[str, dict]:
    spec = dict(spec)
    if "kind" not in spec:
        raise ValueError(f"{what} config needs a 'kind' field")
    return spec.pop("kind"), spec


def build_image_encoder(spec: Mapping[str, Any], *, rngs: nnx.Rngs) -> nnx.Module:
    """{'kind': 'vit', 'variant': 'B/16', ...} | {'kind': 'resnet', ...} | {'kind': 'regions', ...} |
    {'kind': 'detector_regions', 'backbone', 'detector', 'regions'}."""
    kind, fields = _fields(spec, "image encoder")
    if kind == "vit":
        return ViT(vit_config(fields.pop("variant", "B/16"), **fields), rngs=rngs)
    if kind == "resnet":  # no attention layers: the attention and stack switches do not apply
        fields = {k: v for k, v in fields.items() if k not in STACK_SWITCHES}
        return ResNet(ResNetConfig(**fields), rngs=rngs)
    if kind == "regions":
        return RegionEncoder(RegionConfig(**fields), rngs=rngs)
    if kind == "detector_regions":  # pixels -> a detector's proposals -> regions
        return build_detector_regions(fields, rngs=rngs)
    raise ValueError(f"unknown image encoder kind {kind!r}; choose vit, resnet, regions or detector_regions")


def encode_image_batch(image_encoder: nnx.Module, batch: Mapping[str, Any]) -> Encoded:
    """The image encoder on the batch keys it reads (`input_keys`: pixels, or regions and boxes)."""
    return image_encoder(*[batch[k] for k in image_encoder.input_keys])


def build_text_encoder(spec: Mapping[str, Any], *, rngs: nnx.Rngs) -> nnx.Module:
    """{'kind': 'bert', ...BertConfig fields} | {'kind': 'causal' | 'bidirectional',
    ...TextTransformerConfig fields}: CLIP's causal tower or SigLIP's bidirectional one |
    {'kind': 't5', ...T5Config fields}."""
    kind, fields = _fields(spec, "text encoder")
    if kind == "bert":
        return BertEncoder(BertConfig(**fields), rngs=rngs)
    if kind in ("causal", "bidirectional"):
        return TextTransformer(TextTransformerConfig(causal=kind == "causal", **fields), rngs=rngs)
    if kind == "t5":
        return T5Encoder(T5Config(**fields), rngs=rngs)
    raise ValueError(f"unknown text encoder kind {kind!r}; choose bert, causal, bidirectional or t5")


class DualEncoder(nnx.Module):
    """CLIP / SigLIP / LiT: two towers, two projections, a learned temperature (and bias for sigmoid).

    Each projection is one of PROJECTIONS (SigLIP: none for the image, linear_bias for the
    text). Softmax recipes start the temperature at log(1/0.07) and clamp the scale at 100 (CLIP);
    sigmoid recipes start at t' = log 10, b = -10 (SigLIP).
    """

    def __init__(
        self,
        image_encoder: nnx.Module,
        text_encoder: nnx.Module,
        *,
        embed_dim: int,
        contrastive: str = "softmax",
        image_proj: str = "linear",
        text_proj: str = "linear",
        rngs: nnx.Rngs,
    ):
        if contrastive not in CONTRASTIVE_KINDS:
            raise ValueError(f"contrastive must be one of {CONTRASTIVE_KINDS}, got {contrastive!r}")
        self.contrastive = contrastive
        self.img = image_encoder
        self.txt = text_encoder
        self.img_proj = Projection(image_encoder.out_dim, embed_dim, kind=image_proj, rngs=rngs)
        self.txt_proj = Projection(text_encoder.out_dim, embed_dim, kind=text_proj, rngs=rngs)
        if contrastive == "softmax":
            self.logit_scale = nnx.Param(jnp.asarray(math.log(1 / 0.07), jnp.float32))
        else:
            self.logit_scale = nnx.Param(jnp.asarray(math.log(10.0), jnp.float32))
            self.logit_bias = nnx.Param(jnp.asarray(-10.0, jnp.float32))

    def encode_image(self, batch: Mapping[str, jax.Array]) -> Encoded:
        return encode_image_batch(self.img, batch)

    def embed_image(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        return self.img_proj(self.encode_image(batch).pooled)

    def embed_text(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        return self.txt_proj(self.txt.encode(batch["text_ids"], batch["text_mask"]).pooled)

    def scale(self) -> jax.Array:
        """The multiplier applied to cosine similarities: exp(t), capped at 100 for softmax."""
        log_scale = self.logit_scale[...]
        if self.contrastive == "softmax":
            log_scale = jnp.minimum(log_scale, math.log(MAX_LOGIT_SCALE))
        return jnp.exp(log_scale)

    def bias(self) -> jax.Array | None:
        return self.logit_bias[...] if self.contrastive == "sigmoid" else None

    def __call__(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        out = {"img_emb": self.embed_image(batch), "txt_emb": self.embed_text(batch), "logit_scale": self.scale()}
        if self.contrastive == "sigmoid":
            out["logit_bias"] = self.bias()
        return out


def build_dual_encoder(spec: Mapping[str, Any], *, rngs: nnx.Rngs) -> DualEncoder:
    """{'image': {...}, 'text': {...}, 'embed_dim': 512, 'contrastive': 'softmax',
    'image_proj': 'linear', 'text_proj': 'linear'}."""
    return DualEncoder(
        build_image_encoder(spec["image"], rngs=rngs),
        build_text_encoder(spec["text"], rngs=rngs),
        embed_dim=spec.get("embed_dim", 512),
        contrastive=spec.get("contrastive", "softmax"),
        image_proj=spec.get("image_proj", "linear"),
        text_proj=spec.get("text_proj", "linear"),
        rngs=rngs,
    )
