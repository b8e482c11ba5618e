"""`FusionVLP`: the ALBEF / METER / ViLT / UNITER family, whose towers meet in a fusion encoder.

An image encoder (ViT, CNN grid or regions) and a BERT-style text encoder give unimodal
tokens; ITC projects their pooled outputs. A fusion step then joins a text with an image:

- `layout='albef'`: the text encoder's last layers cross-attend to the image tokens
  (`BertConfig.cross_attention_from` marks where they start);
- `layout='merged'`: one transformer over the concatenated sequences (ViLT, UNITER);
- `layout='co_attention'`: two streams that cross-attend to each other (METER).

With `decoder=True` (ALBEF layout only) the text encoder's layers also run as BLIP's
image-grounded decoder (models/grounded_decoder.py): causal, for captioning and generated answers.

The fused [CLS] feeds the ITM and VQA heads; the fused text tokens feed the MLM head. The
model is device-agnostic: hard-negative mining and the losses live in `vlpjax.objectives`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlpjax.models.fusion import CoAttentionFusion, Fused, FusionConfig, MergedAttentionFusion
from vlpjax.models.grounded_decoder import GroundedDecoder
from vlpjax.models.heads import AnswerHead, MaskedLMHead, MatchingHead, Projection
from vlpjax.models.layers import Encoded, sincos_2d
from vlpjax.models.text import BertConfig, BertEncoder
from vlpjax.models.vit import ViTConfig
from vlpjax.models.vlp import MAX_LOGIT_SCALE, build_image_encoder, encode_image_batch

LAYOUTS = ("albef", "merged", "co_attention")


class FusionVLP(nnx.Module):
    def __init__(
        self,
        image_encoder: nnx.Module,
        text_encoder: BertEncoder,
        fusion: nnx.Module | None,
        *,
        embed_dim: int,
        num_answers: int = 0,
        fusion_posemb: bool = False,
        decoder: bool = False,
        rngs: nnx.Rngs,
    ):
        if fusion is None and text_encoder.first_cross_layer == text_encoder.config.num_hidden_layers:
            raise ValueError("the ALBEF layout needs text layers with cross-attention: set text.cross_attention_from")
        if decoder and fusion is not None:
            raise ValueError(
                "model.decoder (BLIP's image-grounded decoder) reuses the text encoder's cross-attention layers: "
                "it needs the ALBEF layout (model.fusion.layout='albef')"
            )
        self.img = image_encoder
        self.txt = text_encoder
        # Grid encoders only: the fusion's keys and values get the 2-D sin-cos position of their
        # patch added again (as DETR does for its cross-attention), so "the object at the top left"
        # is a position lookup even after the image tower has mixed its tokens.
        self.fusion_grid = _position_grid(image_encoder) if fusion_posemb else None  # (grid, width)
        self.fusion = fusion
        fused_dim = text_encoder.out_dim if fusion is None else fusion.config.width
        self.img_proj = Projection(image_encoder.out_dim, embed_dim, rngs=rngs)
        self.txt_proj = Projection(text_encoder.out_dim, embed_dim, rngs=rngs)
        self.logit_scale = nnx.Param(jnp.asarray(math.log(1 / 0.07), jnp.float32))
        self.itm_head = MatchingHead(fused_dim, rngs=rngs)
        self.mlm_head = MaskedLMHead(
            fused_dim, text_encoder.config.vocab_size, act=text_encoder.config.hidden_act, rngs=rngs
        )
        self.vqa_head = AnswerHead(fused_dim, num_answers, rngs=rngs) if num_answers else None
        self.decoder = GroundedDecoder(text_encoder, rngs=rngs) if decoder else None

    # --- unimodal -------------------------------------------------------------------------
    def encode_image(self, batch: Mapping[str, jax.Array]) -> Encoded:
        return encode_image_batch(self.img, batch)

    def encode_text(self, ids: jax.Array, mask: jax.Array) -> Encoded:
        return self.txt.encode(ids, mask)

    def embed_image(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        return self.img_proj(self.encode_image(batch).pooled)

    def embed_text(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        return self.txt_proj(self.encode_text(batch["text_ids"], batch["text_mask"]).pooled)

    def scale(self) -> jax.Array:
        return jnp.exp(jnp.minimum(self.logit_scale[...], math.log(MAX_LOGIT_SCALE)))

    # --- fusion and heads -----------------------------------------------------------------
    def _fusion_image(self, image: Encoded) -> Encoded:
        """The image tokens as the fusion layers read them (with their positions again: fusion_posemb)."""
        if self.fusion_grid is None:
            return image
        grid, width = self.fusion_grid
        return image._replace(tokens=image.tokens + jnp.asarray(sincos_2d(grid, grid, width), image.tokens.dtype))

    def fuse(self, text: Encoded, image: Encoded) -> Fused:
        image = self._fusion_image(image)
        if self.fusion is None:
            tokens = self.txt.fusion_layers(text.tokens, text.mask, image.tokens, image.mask)
            return Fused(text=tokens, image=image.tokens, pooled=tokens[:, 0])
        return self.fusion(text.tokens, text.mask, image.tokens, image.mask)

    def itm_logits(self, text: Encoded, image: Encoded) -> jax.Array:
        """[B, 2] match logits of text row i with image row i."""
        return self.itm_head(self.fuse(text, image).pooled)

    def mlm_logits(self, text: Encoded, image: Encoded) -> jax.Array:
        """[B, L, V] vocabulary logits of the image-conditioned text tokens."""
        return self.mlm_head(self.fuse(text, image).text)

    def answer_logits(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """[B, A] VQA logits for (image, question) rows."""
        if self.vqa_head is None:
            raise ValueError("this model has no VQA head: set model.num_answers (the recipe's answer vocabulary)")
        question = self.encode_text(batch["question_ids"], batch["question_mask"])
        return self.vqa_head(self.fuse(question, self.encode_image(batch)).pooled)

    # --- the image-grounded decoder (model.decoder) ----------------------------------------
    def _grounded_decoder(self) -> GroundedDecoder:
        if self.decoder is None:
            raise ValueError("this fusion model has no text decoder: set model.decoder=True (BLIP's decoder)")
        return self.decoder

    def text_logits(self, batch: Mapping[str, jax.Array], prefix_len: jax.Array | None = None) -> jax.Array:
        """[B, L, vocab]: the decoder's prediction of each next token of batch['text_ids'] given
        the image (causal throughout: a prompt needs no `prefix_len`)."""
        return self._decoder_logits(batch, self.encode_image(batch))

    def _decoder_logits(self, batch: Mapping[str, jax.Array], image: Encoded) -> jax.Array:
        image = self._fusion_image(image)
        return self._grounded_decoder().logits(self.txt, batch["text_ids"], batch["text_mask"], image)

    @property
    def max_text_len(self) -> int:
        return self.txt.config.max_position_embeddings

    def caption_memory(self, batch: Mapping[str, jax.Array]) -> tuple:
        """The fusion layers' cross-attention keys and values of the images: once per image."""
        return self._grounded_decoder().memory(self.txt, self._fusion_image(self.encode_image(batch)))

    def memory_slots(self, memory) -> int:
        """Cache slots the image takes before the text: none, it is attended to across."""
        return 0

    def empty_cache(self, batch: int, max_len: int):
        return self._grounded_decoder().empty_cache(self.txt, batch, max_len)

    def decode(self, ids: jax.Array, mask: jax.Array, cache, memory):
        return self._grounded_decoder().decode(self.txt, ids, mask, cache, memory)

    def __call__(self, batch: Mapping[str, jax.Array]) -> dict[str, Any]:
        """Unimodal encodings and ITC embeddings, and with a decoder its next-token logits; the
        objectives run the fusion as they need it (what no objective reads, jit drops)."""
        if "question_ids" in batch:  # VQA fine-tuning
            return {"answer_logits": self.answer_logits(batch)}
        image = self.encode_image(batch)
        text = self.encode_text(batch["text_ids"], batch["text_mask"])
        out = {
            "image": image,
            "text": text,
            "img_emb": self.img_proj(image.pooled),
            "txt_emb": self.txt_proj(text.pooled),
            "logit_scale": self.scale(),
        }
        if self.decoder is not None:
            out["logits"] = self._decoder_logits(batch, image)
        return out


def _position_grid(image_encoder) -> tuple[int, int]:
    config = getattr(image_encoder, "config", None)
    if not isinstance(config, ViTConfig) or config.pool == "cls":
        raise ValueError("model.fusion_posemb needs a ViT image encoder without a [CLS] token (pool gap or map)")
    return config.grid, config.width


def build_fusion(spec: Mapping[str, Any] | None, text_dim: int, image_dim: int, *, rngs: nnx.Rngs) -> nnx.Module | None:
    """{'layout': 'albef'} -> None (the text encoder fuses); merged / co_attention -> an encoder."""
    spec = dict(spec or {})
    layout = spec.pop("layout", "albef")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown fusion layout {layout!r}; choose one of {LAYOUTS}")
    if layout == "albef":
        if spec:
            raise ValueError(
                f"the albef layout takes its fusion layers from the text encoder; drop fusion fields {sorted(spec)}"
            )
        return None
    config = FusionConfig(text_dim=text_dim, image_dim=image_dim, **spec)
    return (MergedAttentionFusion if layout == "merged" else CoAttentionFusion)(config, rngs=rngs)


def build_fusion_vlp(spec: Mapping[str, Any], *, rngs: nnx.Rngs) -> FusionVLP:
    """{'image': {...}, 'text': {BertConfig fields}, 'fusion': {'layout': ..., ...}, 'embed_dim', 'num_answers',
    'fusion_posemb', 'decoder'}."""
    image = build_image_encoder(spec["image"], rngs=rngs)
    text_fields = dict(spec["text"])
    if text_fields.pop("kind", "bert") != "bert":
        raise ValueError("fusion models use a BERT-style text encoder (model.text.kind='bert')")
    fusion_spec = spec.get("fusion") or {}
    if fusion_spec.get("layout", "albef") == "albef":
        text_fields.setdefault("context_dim", image.out_dim)
    text = BertEncoder(BertConfig(**text_fields), rngs=rngs)
    fusion = build_fusion(fusion_spec, text.out_dim, image.out_dim, rngs=rngs)
    return FusionVLP(
        image,
        text,
        fusion,
        embed_dim=spec.get("embed_dim", 256),
        num_answers=spec.get("num_answers", 0),
        fusion_posemb=spec.get("fusion_posemb", False),
        decoder=spec.get("decoder", False),
        rngs=rngs,
    )
