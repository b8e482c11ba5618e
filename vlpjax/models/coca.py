"""CoCa (Yu et al. 2022): a dual encoder whose text tower goes on into a captioning decoder.

- The image tower's tokens feed two attentional poolers: one learned query gives the
  contrastive image embedding, N queries give the tokens the decoder cross-attends to.
- The text tower is causal (the unimodal layers); its pooled token ([SEP], the last real one)
  is the contrastive text embedding, as CoCa's appended [CLS] is.
- The multimodal layers take the unimodal token features, attend causally to the text and to
  the N image queries, and predict the next token: trained with the `lm` (captioning) loss
  beside `itc`, both on the same forward pass.

A token's output depends only on the tokens up to it, in both parts (tests/test_coca.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlpjax.models.attention import Mask, key_padding
from vlpjax.models.layers import (
    Encoded,
    MultiHeadAttention,
    dense,
    float32_logits,
    layer_norm,
    pre_ln_blocks,
    with_axes,
)
from vlpjax.models.lm import KVCache
from vlpjax.models.stack import run_stack
from vlpjax.models.text import TextTransformer
from vlpjax.models.vlp import DualEncoder

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CoCaConfig:
    decoder_depth: int = 2  # multimodal layers after the unimodal text tower
    decoder_queries: int = 16  # image tokens the decoder attends to (the captioning pooler's queries)
    pool_heads: int = 4


class AttentionalPooler(nnx.Module):
    """[B, T, D] tokens -> [B, Q, D]: Q learned queries attend over the (normalised) tokens."""

    def __init__(self, dim: int, num_queries: int, num_heads: int, *, dtype, attention: str, rngs: nnx.Rngs):
        init = with_axes(nnx.initializers.normal(0.02), (None, "embed"))
        self.queries = nnx.Param(init(rngs.params(), (num_queries, dim)))
        self.ln_tokens = layer_norm(dim, dtype=dtype, rngs=rngs)
        self.attn = MultiHeadAttention(dim, num_heads, dtype=dtype, attention=attention, rngs=rngs)
        self.ln_out = layer_norm(dim, dtype=dtype, rngs=rngs)

    def __call__(self, tokens: Array, mask: Array | None = None) -> Array:
        queries = jnp.broadcast_to(self.queries[...].astype(tokens.dtype), (tokens.shape[0], *self.queries.shape))
        return self.ln_out(self.attn(queries, self.ln_tokens(tokens), mask=key_padding(mask)))


class CoCa(DualEncoder):
    """The dual encoder's towers, projections and temperature, plus the poolers and decoder."""

    def __init__(
        self,
        image_encoder: nnx.Module,
        text_encoder: TextTransformer,
        config: CoCaConfig,
        *,
        vocab_size: int,
        rngs: nnx.Rngs,
        **dual_encoder: Any,
    ):
        t = getattr(text_encoder, "config", None)
        if not (isinstance(text_encoder, TextTransformer) and t.causal and t.mask_padding):
            raise ValueError(
                "CoCa's text tower must be causal (model.text.kind='causal') and mask its padding: the decoder "
                "continues it, a token at a time when generating"
            )
        if t.pool not in ("last_real", "eos", "argmax"):
            raise ValueError(f"CoCa's text embedding is its end token's feature: model.text.pool={t.pool!r} is not")
        image_dim, dtype = image_encoder.out_dim, jnp.dtype(t.dtype)
        super().__init__(image_encoder, text_encoder, rngs=rngs, **dual_encoder)
        self.config = config
        common = dict(dtype=dtype, attention=t.attention, rngs=rngs)
        self.contrastive_pool = AttentionalPooler(image_dim, 1, config.pool_heads, **common)
        self.caption_pool = AttentionalPooler(image_dim, config.decoder_queries, config.pool_heads, **common)
        self.decoder = pre_ln_blocks(
            config.decoder_depth, t.width, t.num_heads, t.mlp_dim, act=t.act, eps=t.eps, context_dim=image_dim, **common
        )
        self.ln_decoder = layer_norm(t.width, eps=t.eps, dtype=dtype, rngs=rngs)
        self.lm_head = dense(t.width, vocab_size, ("embed", "vocab"), use_bias=False, dtype=dtype, rngs=rngs)

    def embed_image(self, batch: Mapping[str, Array]) -> Array:
        return self._image_embedding(self.encode_image(batch))

    def _image_embedding(self, image: Encoded) -> Array:
        return self.img_proj(self.contrastive_pool(image.tokens, image.mask)[:, 0])

    def caption_context(self, image: Encoded) -> Array:
        """The N image tokens every decoder layer attends to: computed once per image."""
        return self.caption_pool(image.tokens, image.mask)

    def caption_logits(self, text: Encoded, context: Array) -> Array:
        """[B, L, vocab]: position t's prediction of token t + 1 from the text up to t and the image."""
        mask = Mask(keys=text.mask, causal=True)
        s = self.txt.config

        def layer_fn(block, x):
            return block(x, mask=mask, context=context)

        x = run_stack(self.decoder, text.tokens, layer_fn, remat=s.remat, scan=s.scan_layers)
        return float32_logits(self.lm_head, self.ln_decoder(x))

    def text_logits(self, batch: Mapping[str, Array], prefix_len: Array | None = None) -> Array:
        """`caption_logits` of batch['text_ids'] given batch's images (causal throughout: a
        prompt needs no `prefix_len`)."""
        text = self.txt.encode(batch["text_ids"], batch["text_mask"])
        return self.caption_logits(text, self.caption_context(self.encode_image(batch)))

    # --- generation: models/decoding.py calls `decode` with the memory as its fixed input ---------

    def caption_memory(self, batch: Mapping[str, Array]) -> tuple[tuple[Array, Array], ...]:
        """Each decoder layer's cross-attention keys and values of the images: computed once
        per image, then read by every generated token."""
        context = self.caption_context(self.encode_image(batch))
        return tuple(block.cross.keys_values(context) for block in self.decoder)

    @property
    def max_text_len(self) -> int:
        return self.txt.config.max_len

    def memory_slots(self, memory) -> int:
        """Cache slots the image takes before the text: none, it is attended to across."""
        return 0

    def empty_cache(self, batch: int, max_len: int) -> KVCache:
        """Self-attention keys and values of every text and decoder layer for `max_len` slots."""
        t = self.txt.config
        layers = t.depth + self.config.decoder_depth
        return KVCache.zeros(batch, max_len, layers, t.num_heads, t.width // t.num_heads, t.dtype)

    def decode(self, ids: Array, mask: Array, cache: KVCache, memory) -> tuple[Array, KVCache]:
        """Logits [B, L, vocab] of left-padded new tokens given the cache and the images'
        `caption_memory`; the same as `caption_logits` on the whole text, a token at a time."""
        t, mask = self.txt, mask.astype(bool)
        # Conservative: every slot may hold a real token, and each must have a trained position.
        if cache.keys[0].shape[1] > t.config.max_len:
            raise ValueError(f"a cache of {cache.keys[0].shape[1]} slots exceeds the text tower's max_len")
        positions = jnp.maximum(cache.positions(mask), 0)  # a token's position: the real tokens before it
        key_mask, attention = cache.causal_attention(mask)
        x = (t.token_embed(ids) + jnp.take(t.pos_embed[...], positions, axis=0)).astype(jnp.dtype(t.config.dtype))
        past = list(zip(cache.keys, cache.values, strict=True))
        updated = []
        for block in t.blocks:  # the unimodal tower
            x, kv = block.step(x, past[len(updated)], attention, cache.length)
            updated.append(kv)
        x = t.ln_final(x)  # the tower's output, as the decoder reads it in training
        for block, block_memory in zip(self.decoder, memory, strict=True):
            x, kv = block.step(x, past[len(updated)], attention, cache.length, block_memory)
            updated.append(kv)
        logits = float32_logits(self.lm_head, self.ln_decoder(x))
        keys, values = (tuple(part) for part in zip(*updated, strict=True))
        return logits, KVCache(keys, values, key_mask, cache.length + ids.shape[1])

    def __call__(self, batch: Mapping[str, Array]) -> dict[str, Array]:
        image = self.encode_image(batch)  # once, for both poolers
        text = self.txt.encode(batch["text_ids"], batch["text_mask"])
        out = {
            "img_emb": self._image_embedding(image),
            "txt_emb": self.txt_proj(text.pooled),
            "logit_scale": self.scale(),
            "logits": self.caption_logits(text, self.caption_context(image)),
        }
        if self.contrastive == "sigmoid":
            out["logit_bias"] = self.bias()
        return out


def build_coca(spec: Mapping[str, Any], *, image_encoder, text_encoder, vocab_size: int, rngs: nnx.Rngs) -> CoCa:
    """{'coca': {CoCaConfig fields}, 'embed_dim', 'contrastive', 'image_proj', 'text_proj'}."""
    return CoCa(
        image_encoder,
        text_encoder,
        CoCaConfig(**spec.get("coca", {})),
        vocab_size=vocab_size,
        embed_dim=spec.get("embed_dim", 512),
        contrastive=spec.get("contrastive", "softmax"),
        image_proj=spec.get("image_proj", "linear"),
        text_proj=spec.get("text_proj", "linear"),
        rngs=rngs,
    )
