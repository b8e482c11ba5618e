"""Flamingo: a frozen vision encoder and a frozen decoder LM joined by trained adapters.

- `PerceiverResampler`: learned latents attend to concat(media tokens, latents), so every
  image becomes a fixed number of latents whatever its token count.
- `GatedCrossAttentionBlock`: text tokens (LayerNorm on the text side only) attend to the
  latents of their latest preceding `<image>`; tanh gates on the attention and the FFN start
  at 0, so the untrained model is the LM exactly. Tokens before the first image get exactly
  zero from the block.
- `Flamingo`: one block before every n-th LM layer, and two new tokens, `<image>` and
  `<|endofchunk|>`, whose embedding (and output) rows are the only trained part of the LM.

Text is a sequence of ids in which `<image>` marks where the m-th image of the row stands;
`media` [B, M, H, W, 3] holds those images in order.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from vlpjax.models.attention import Mask
from vlpjax.models.layers import MLP, MultiHeadAttention, layer_norm, with_axes
from vlpjax.models.lm import DecoderLM, KVCache, run_decoder
from vlpjax.models.stack import run_stack

Array = jax.Array
NEW_TOKENS = ("<image>", "<|endofchunk|>")


@dataclasses.dataclass(frozen=True)
class FlamingoConfig:
    cross_every: int = 1  # a gated cross-attention block before every n-th LM layer
    num_latents: int = 16
    resampler_depth: int = 2
    resampler_heads: int = 4
    resampler_mlp_dim: int = 0  # 0: 4x the vision width
    cross_heads: int = 4
    cross_mlp_dim: int = 0  # 0: 4x the LM width


class PerceiverLayer(nnx.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, dtype, attention: str, rngs: nnx.Rngs):
        self.ln_media = layer_norm(dim, dtype=dtype, rngs=rngs)
        self.ln_latents = layer_norm(dim, dtype=dtype, rngs=rngs)
        self.attn = MultiHeadAttention(dim, num_heads, use_bias=False, dtype=dtype, attention=attention, rngs=rngs)
        self.ln_mlp = layer_norm(dim, dtype=dtype, rngs=rngs)
        self.mlp = MLP(dim, mlp_dim, dtype=dtype, rngs=rngs)

    def __call__(self, media: Array, latents: Array) -> Array:
        queries = self.ln_latents(latents)
        keys = jnp.concatenate([self.ln_media(media), queries], axis=1)
        latents = latents + self.attn(queries, keys)
        return latents + self.mlp(self.ln_mlp(latents))


class PerceiverResampler(nnx.Module):
    """[B, T, D] media tokens -> [B, num_latents, D]."""

    def __init__(
        self,
        dim: int,
        *,
        depth: int,
        num_latents: int,
        num_heads: int,
        mlp_dim: int,
        dtype=jnp.float32,
        attention: str = "xla",
        remat: str = "none",
        scan_layers: bool = False,
        rngs: nnx.Rngs,
    ):
        init = with_axes(nnx.initializers.normal(0.02), (None, "embed"))
        self.latents = nnx.Param(init(rngs.params(), (num_latents, dim)))
        self.layers = nnx.List(
            [PerceiverLayer(dim, num_heads, mlp_dim, dtype=dtype, attention=attention, rngs=rngs) for _ in range(depth)]
        )
        self.ln_out = layer_norm(dim, rngs=rngs)
        self.remat, self.scan_layers = remat, scan_layers

    def __call__(self, media: Array) -> Array:
        latents = jnp.broadcast_to(self.latents[...].astype(media.dtype), (media.shape[0], *self.latents.shape))
        latents = run_stack(
            self.layers, latents, lambda layer, x: layer(media, x), remat=self.remat, scan=self.scan_layers
        )
        return self.ln_out(latents)


def latest_image_mask(media_of_token: Array, media_of_latent: Array) -> Mask:
    """[B, 1, L, K]: token l may attend to latent k iff k belongs to l's latest preceding image."""
    allowed = (media_of_token[:, None, :, None] == media_of_latent[None, None, None, :]) & (media_of_token > 0)[
        :, None, :, None
    ]
    return Mask(pairs=allowed)


class GatedCrossAttentionBlock(nnx.Module):
    def __init__(
        self,
        dim: int,
        media_dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        dtype=jnp.float32,
        attention: str = "xla",
        rngs: nnx.Rngs,
    ):
        gate = with_axes(nnx.initializers.zeros_init(), ())
        # The text side only: the latents are normed by the resampler.
        self.ln_attn = layer_norm(dim, dtype=dtype, rngs=rngs)
        self.attn = MultiHeadAttention(
            dim, num_heads, kv_dim=media_dim, use_bias=False, dtype=dtype, attention=attention, rngs=rngs
        )
        self.attn_gate = nnx.Param(gate(rngs.params(), ()))
        self.ln_mlp = layer_norm(dim, dtype=dtype, rngs=rngs)
        self.mlp = MLP(dim, mlp_dim, dtype=dtype, rngs=rngs)
        self.mlp_gate = nnx.Param(gate(rngs.params(), ()))

    def __call__(self, x: Array, latents: Array, media_of_token: Array, media_of_latent: Array) -> Array:
        """x [B, L, D]; latents [B, K, Dm]; media_of_token [B, L] (0 = no image yet, m = the m-th);
        media_of_latent [K] (which image each latent came from, 1-based)."""
        has_media = (media_of_token > 0)[..., None]
        attended = self.attn(self.ln_attn(x), latents, mask=latest_image_mask(media_of_token, media_of_latent))
        y = x + jnp.tanh(self.attn_gate[...]).astype(x.dtype) * attended
        y = y + jnp.tanh(self.mlp_gate[...]).astype(x.dtype) * self.mlp(self.ln_mlp(y))
        # A token with no image before it keeps its value exactly (its attention had no key).
        return jnp.where(has_media, y, x)


class FlamingoCache(NamedTuple):
    lm: KVCache
    media_seen: Array  # [B] images in the tokens already in the cache

    def expand(self, index: Array) -> "FlamingoCache":
        return FlamingoCache(self.lm.expand(index), jnp.take(self.media_seen, index, axis=0))


class Flamingo(nnx.Module):
    def __init__(self, vision: nnx.Module, lm: DecoderLM, config: FlamingoConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        self.img = vision
        self.lm = lm
        vocab, width, media_dim = lm.config.vocab_size, lm.config.hidden_size, vision.out_dim
        self.image_id, self.chunk_end_id = vocab, vocab + 1
        dtype, lc = jnp.dtype(lm.config.dtype), lm.config  # the adapters run as the LM does
        self.resampler = PerceiverResampler(
            media_dim, depth=c.resampler_depth, num_latents=c.num_latents, num_heads=c.resampler_heads,
            mlp_dim=c.resampler_mlp_dim or 4 * media_dim, dtype=dtype, attention=lc.attention, remat=lc.remat,
            scan_layers=lc.scan_layers, rngs=rngs,
        )  # fmt: skip
        self.cross_layers = tuple(i for i in range(lm.config.num_layers) if (i + 1) % c.cross_every == 0)
        self.cross = nnx.List(
            [
                GatedCrossAttentionBlock(
                    width,
                    media_dim,
                    c.cross_heads,
                    c.cross_mlp_dim or 4 * width,
                    dtype=dtype,
                    attention=lc.attention,
                    rngs=rngs,
                )
                for _ in self.cross_layers
            ]
        )
        # New tokens start at the mean embedding: a neutral point of the LM's input space.
        self.new_token_embed = nnx.Param(
            jnp.broadcast_to(jnp.mean(lm.embed_tokens[...], axis=0), (len(NEW_TOKENS), width))
        )
        if not lm.config.tie_embeddings:
            self.new_token_head = nnx.Param(
                jnp.broadcast_to(jnp.mean(lm.lm_head[...], axis=0), (len(NEW_TOKENS), width))
            )

    @property
    def vocab_size(self) -> int:
        return self.lm.config.vocab_size + len(NEW_TOKENS)

    # --- pieces --------------------------------------------------------------------------
    def encode_media(self, media: Array) -> Array:
        """[B, M, H, W, 3] -> latents [B, M * num_latents, D]."""
        b, m = media.shape[:2]
        tokens = self.img(media.reshape(b * m, *media.shape[2:])).tokens
        latents = self.resampler(tokens)
        return latents.reshape(b, m * latents.shape[1], latents.shape[2])

    def token_vectors(self, ids: Array) -> Array:
        vocab = self.lm.config.vocab_size
        base = self.lm.token_vectors(jnp.minimum(ids, vocab - 1))
        new = jnp.take(self.new_token_embed[...], jnp.clip(ids - vocab, 0, len(NEW_TOKENS) - 1), axis=0)
        return jnp.where((ids >= vocab)[..., None], new.astype(base.dtype), base)

    def head(self, hidden: Array) -> Array:
        """The LM's logits with the new tokens' columns appended: [B, L, V + 2]."""
        h = self.lm.ln_final(hidden)  # normed once for both sets of columns
        rows = self.new_token_embed if self.lm.config.tie_embeddings else self.new_token_head
        extra = jnp.einsum("bld,nd->bln", h, rows[...].astype(h.dtype), preferred_element_type=jnp.float32)
        return jnp.concatenate([self.lm.vocab_logits(h), extra], axis=-1)

    def logits(self, ids: Array, mask: Array | None, latents: Array, cache: FlamingoCache | None = None):
        """Logits [B, L, V + 2] (and the updated cache) given the media latents of the rows."""
        is_image = (ids == self.image_id).astype(jnp.int32)
        seen = jnp.zeros((ids.shape[0],), jnp.int32) if cache is None else cache.media_seen
        media_of_token = seen[:, None] + jnp.cumsum(is_image, axis=1)
        media_of_latent = jnp.repeat(
            jnp.arange(1, latents.shape[1] // self.config.num_latents + 1), self.config.num_latents
        )
        blocks = dict(zip(self.cross_layers, self.cross, strict=False))

        def cross(block, x):
            return block(x, latents, media_of_token, media_of_latent)

        def between_layers(i, x):
            return run_stack([blocks[i]], x, cross, remat=self.lm.config.remat) if i in blocks else x

        out = run_decoder(
            self.lm, self.token_vectors(ids), mask, None if cache is None else cache.lm, between_layers, self.head
        )
        if cache is None:
            return out
        logits, lm_cache = out
        return logits, FlamingoCache(lm_cache, media_of_token[:, -1])

    def empty_cache(self, batch: int, max_len: int) -> FlamingoCache:
        return FlamingoCache(KVCache.empty(self.lm.config, batch, max_len), jnp.zeros((batch,), jnp.int32))

    def decode(self, ids: Array, mask: Array, cache: FlamingoCache, latents: Array):
        """One generation step with the media encoded beforehand (once per prompt)."""
        return self.logits(ids, mask, latents, cache)

    def __call__(self, batch) -> dict:
        return {"logits": self.logits(batch["text_ids"], batch["text_mask"], self.encode_media(batch["media"]))}

    @property
    def ignored_targets(self) -> tuple[int, ...]:
        """Targets the LM loss skips: an `<image>` is given by the data, not predicted."""
        return (self.image_id,)
