"""BLIP's image-grounded text decoder for the fusion family's ALBEF layout (Li et al. 2022).

The decoder is the text encoder run again with one change per layer: a causal self-attention
of its own replaces the encoder's bidirectional one. Everything else is the encoder's, read
from the same parameters: the embeddings, each layer's cross-attention to the image (the
fusion layers) and its MLP with their LayerNorms. The decoder owns only

- `self_attention[i]`: layer i's causal self-attention and the LayerNorm after it;
- `lm_head`: next-token prediction (BLIP's encoder has no LM head to share, and the MLM head
  predicts a token at its own position, not the next one).

So ITC, ITM and MLM (through the encoder) and LM (through the decoder) all train the shared
layers in one step, and an albef_shapes checkpoint loads into every parameter but these.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vlpjax.models.attention import Mask, key_padding
from vlpjax.models.heads import MaskedLMHead
from vlpjax.models.layers import Encoded, MultiHeadAttention, PostLNBlock, layer_norm
from vlpjax.models.lm import KVCache
from vlpjax.models.stack import run_stack
from vlpjax.models.text import BertEncoder

Array = jax.Array


class CausalSelfAttention(nnx.Module):
    """LN(x + attn(x)) under a causal mask: the part of a BERT layer the decoder replaces."""

    def __init__(self, dim: int, num_heads: int, *, eps: float, dtype, attention: str, rngs: nnx.Rngs):
        self.attn = MultiHeadAttention(dim, num_heads, dtype=dtype, attention=attention, rngs=rngs)
        self.ln = layer_norm(dim, eps=eps, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, mask: Mask) -> Array:
        return self.ln(x + self.attn(x, mask=mask))

    def step(self, x: Array, past: tuple[Array, Array], mask: Mask, offset: Array):
        h, past = self.attn.cached_self_attention(x, *past, mask, offset)
        return self.ln(x + h), past


class GroundedDecoder(nnx.Module):
    def __init__(self, text: BertEncoder, *, rngs: nnx.Rngs):
        c = text.config
        common = dict(eps=c.layer_norm_eps, dtype=jnp.dtype(c.dtype), attention=c.attention, rngs=rngs)
        self.self_attention = nnx.List(
            [CausalSelfAttention(c.hidden_size, c.num_attention_heads, **common) for _ in range(c.num_hidden_layers)]
        )
        self.lm_head = MaskedLMHead(c.hidden_size, c.vocab_size, act=c.hidden_act, rngs=rngs)

    def _pairs(self, text: BertEncoder) -> tuple[list, list]:
        """(own self-attention, shared encoder layer) per layer, split where cross-attention
        starts: each part is one structure for scan."""
        pairs = list(zip(self.self_attention, text.layers, strict=True))
        return pairs[: text.first_cross_layer], pairs[text.first_cross_layer :]

    def logits(self, text: BertEncoder, ids: Array, mask: Array, image: Encoded) -> Array:
        """[B, L, vocab] float32: position t's prediction of token t + 1 from the text up to t
        and the image tokens."""
        causal, image_mask = Mask(keys=mask.astype(bool), causal=True), key_padding(image.mask)
        c = text.config

        def layer_fn(pair, x):
            own, shared = pair
            return shared.after_self_attention(own(x, causal), image.tokens, image_mask)

        x = text.embed(ids)
        for part in self._pairs(text):
            x = run_stack(part, x, layer_fn, remat=c.remat, scan=c.scan_layers)
        return self.lm_head(x)

    # --- generation (models/decoding.py): the image's keys and values are computed once -------

    def memory(self, text: BertEncoder, image: Encoded) -> tuple:
        """Each fusion layer's cross-attention (keys, values, real-token mask) of the image tokens."""
        real = jnp.ones(image.tokens.shape[:2], bool) if image.mask is None else image.mask.astype(bool)
        return tuple((*layer.cross.keys_values(image.tokens), real) for layer in _cross_layers(text.layers))

    def empty_cache(self, text: BertEncoder, batch: int, max_len: int) -> KVCache:
        c = text.config
        head_dim = c.hidden_size // c.num_attention_heads
        return KVCache.zeros(batch, max_len, c.num_hidden_layers, c.num_attention_heads, head_dim, c.dtype)

    def decode(self, text: BertEncoder, ids: Array, mask: Array, cache: KVCache, memory) -> tuple[Array, KVCache]:
        """Logits of left-padded new tokens given the cache: `logits` a token at a time."""
        if cache.keys[0].shape[1] > text.config.max_position_embeddings:
            raise ValueError(
                f"a cache of {cache.keys[0].shape[1]} slots exceeds max_position_embeddings="
                f"{text.config.max_position_embeddings}"
            )
        mask = mask.astype(bool)
        positions = jnp.maximum(cache.positions(mask), 0)  # a token's position: the real tokens before it
        key_mask, attention = cache.causal_attention(mask)
        x, cross_memory = text.embed(ids, positions=positions), iter(memory)
        keys, values = [], []
        for i, (own, shared) in enumerate(zip(self.self_attention, text.layers, strict=True)):
            x, (k, v) = own.step(x, (cache.keys[i], cache.values[i]), attention, cache.length)
            if shared.has_cross:
                layer_keys, layer_values, real = next(cross_memory)
                x = shared.after_self_attention(x, memory=(layer_keys, layer_values, key_padding(real)))
            else:
                x = shared.after_self_attention(x)
            keys.append(k)
            values.append(v)
        return self.lm_head(x), KVCache(tuple(keys), tuple(values), key_mask, cache.length + ids.shape[1])


def _cross_layers(layers: Sequence[PostLNBlock]) -> list[PostLNBlock]:
    return [layer for layer in layers if layer.has_cross]
