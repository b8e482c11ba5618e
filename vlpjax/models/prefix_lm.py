"""PrefixLM (SimVLM, Wang et al. 2022): one transformer over [image tokens; text].

The image tokens and the first `prefix_len` text tokens form the prefix: they all attend to
each other, both ways. The rest of the text (the suffix) is causal: a suffix token sees the
prefix and the suffix tokens up to itself. The `prefix_lm` objective draws the prefix length
at random per row and scores the next-token predictions of the suffix only; with a prefix of
just [CLS] the model is a captioner.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlpjax.models.attention import Mask
from vlpjax.models.layers import dense, float32_logits, layer_norm, pre_ln_blocks
from vlpjax.models.lm import KVCache
from vlpjax.models.stack import run_stack
from vlpjax.models.text import learned_positions, token_embedding
from vlpjax.models.vlp import encode_image_batch

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class PrefixLMConfig:
    vocab_size: int = 30522
    width: int = 512
    depth: int = 6
    num_heads: int = 8
    mlp_dim: int = 2048
    max_len: int = 64  # text positions
    act: str = "gelu"
    eps: float = 1e-6
    dtype: str = "float32"
    attention: str = "xla"
    remat: str = "none"
    scan_layers: bool = False


def prefix_visibility(image_len: int, text_mask: Array, prefix_len: Array) -> Mask:
    """[B, 1, T+L, T+L]: query q may see key k iff k is real and k lies in the prefix (the T
    image tokens and the first prefix_len text tokens) or k <= q."""
    b, length = text_mask.shape
    total = image_len + length
    real = jnp.concatenate([jnp.ones((b, image_len), bool), text_mask.astype(bool)], axis=1)
    k = jnp.arange(total)
    in_prefix = k[None, :] < (image_len + prefix_len)[:, None]  # [B, K]
    causal = k[None, :] <= k[:, None]  # [Q, K]
    allowed = real[:, None, :] & (in_prefix[:, None, :] | causal[None])
    return Mask(pairs=allowed[:, None])


class PrefixLM(nnx.Module):
    def __init__(self, image_encoder: nnx.Module, config: PrefixLMConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        dtype = jnp.dtype(c.dtype)
        self.img = image_encoder
        self.img_in = dense(image_encoder.out_dim, c.width, (None, "embed"), dtype=dtype, rngs=rngs)
        self.token_embed = token_embedding(c.vocab_size, c.width, rngs)
        self.pos_embed = learned_positions(c.max_len, c.width, rngs)
        self.blocks = pre_ln_blocks(
            c.depth,
            c.width,
            c.num_heads,
            c.mlp_dim,
            act=c.act,
            eps=c.eps,
            dtype=dtype,
            attention=c.attention,
            rngs=rngs,
        )
        self.ln_final = layer_norm(c.width, eps=c.eps, dtype=dtype, rngs=rngs)
        self.lm_head = dense(c.width, c.vocab_size, ("embed", "vocab"), use_bias=False, dtype=dtype, rngs=rngs)

    def image_tokens(self, batch: Mapping[str, Array]) -> Array:
        """[B, T, width]: the image tower's tokens in the transformer's width."""
        return self.img_in(encode_image_batch(self.img, batch).tokens)

    def text_vectors(self, ids: Array) -> Array:
        if ids.shape[1] > self.config.max_len:
            raise ValueError(f"text length {ids.shape[1]} exceeds the PrefixLM's max_len={self.config.max_len}")
        return self.token_embed(ids) + self.pos_embed[: ids.shape[1]][None]

    def text_logits(self, batch: Mapping[str, Array], prefix_len: Array) -> Array:
        """[B, L, vocab]: text position t's prediction of token t + 1, with the image and the
        first prefix_len[b] text tokens as the bidirectional prefix of row b."""
        image = self.image_tokens(batch)
        c = self.config
        x = jnp.concatenate([image, self.text_vectors(batch["text_ids"])], axis=1).astype(jnp.dtype(c.dtype))
        mask = prefix_visibility(image.shape[1], batch["text_mask"], prefix_len)
        x = run_stack(self.blocks, x, lambda block, x: block(x, mask=mask), remat=c.remat, scan=c.scan_layers)
        return float32_logits(self.lm_head, self.ln_final(x[:, image.shape[1] :]))

    def __call__(self, batch: Mapping[str, Array]) -> dict[str, Array]:
        """Nothing: the prefix_lm objective draws each row's prefix and runs `text_logits` itself."""
        return {}

    # --- generation: models/decoding.py calls `decode` with the image tokens as its fixed input ---

    @property
    def max_text_len(self) -> int:
        return self.config.max_len

    def caption_memory(self, batch: Mapping[str, Array]) -> Array:
        """The image tokens that open every prompt's prefix: encoded once per image."""
        return self.image_tokens(batch)

    def memory_slots(self, memory: Array) -> int:
        """Cache slots the image takes before the text."""
        return memory.shape[1]

    def empty_cache(self, batch: int, max_len: int) -> KVCache:
        c = self.config
        return KVCache.zeros(batch, max_len, c.depth, c.num_heads, c.width // c.num_heads, c.dtype)

    def decode(self, ids: Array, mask: Array, cache: KVCache, image: Array) -> tuple[Array, KVCache]:
        """Logits [B, L, vocab] of left-padded new tokens. The first call (an empty cache)
        takes the image and the prompt as one bidirectional prefix, as training does with
        prefix_len = the prompt's length; later tokens are causal."""
        mask = mask.astype(bool)
        return jax.lax.cond(cache.length == 0, self._prefill, self._extend, ids, mask, cache, image)

    def _prefill(self, ids: Array, mask: Array, cache: KVCache, image: Array):
        image_len = image.shape[1]
        positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
        slots = jnp.concatenate([jnp.ones(image.shape[:2], bool), mask], axis=1)
        key_mask = jax.lax.dynamic_update_slice_in_dim(cache.valid, slots, 0, axis=1)
        x = jnp.concatenate([image, self._text_at(ids, positions)], axis=1)
        logits, cache = self._run_cached(x, cache, key_mask, Mask(pairs=key_mask[:, None, None, :]), jnp.int32(0))
        return logits[:, image_len:], cache

    def _extend(self, ids: Array, mask: Array, cache: KVCache, image: Array):
        positions = jnp.maximum(cache.positions(mask) - image.shape[1], 0)  # real text tokens before
        key_mask, attention = cache.causal_attention(mask)
        return self._run_cached(self._text_at(ids, positions), cache, key_mask, attention, cache.length)

    def _text_at(self, ids: Array, positions: Array) -> Array:
        vectors = self.token_embed(ids) + jnp.take(self.pos_embed[...], positions, axis=0)
        return vectors.astype(jnp.dtype(self.config.dtype))

    def _run_cached(self, x: Array, cache: KVCache, key_mask: Array, attention: Mask, offset: Array):
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            x, (k, v) = block.step(x, (cache.keys[i], cache.values[i]), attention, offset)
            keys.append(k)
            values.append(v)
        logits = float32_logits(self.lm_head, self.ln_final(x))
        return logits, KVCache(tuple(keys), tuple(values), key_mask, offset + x.shape[1])


def build_prefix_lm(spec: Mapping[str, Any], *, image_encoder, vocab_size: int, rngs: nnx.Rngs) -> PrefixLM:
    """{'prefix_lm': {PrefixLMConfig fields but vocab_size}} plus the switches."""
    return PrefixLM(image_encoder, PrefixLMConfig(**spec["prefix_lm"], vocab_size=vocab_size), rngs=rngs)
