"""Text towers: a BERT-style bidirectional encoder and a pre-LN text transformer (CLIP, SigLIP).

`BertEncoder` mirrors Hugging Face BERT's post-LN layout exactly so its weights map one to one
(see `vlpjax.interop.hf`). `TextTransformer` is pre-LN, causal (CLIP) or bidirectional
(SigLIP), and pools one position (TEXT_POOLS).
Both take right-padded ids with a boolean/int mask and ignore padded positions entirely.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from vlpjax.models.attention import Mask, key_padding
from vlpjax.models.layers import Encoded, PostLNBlock, layer_norm, pre_ln_blocks, with_axes
from vlpjax.models.stack import run_stack


def learned_positions(max_len: int, dim: int, rngs: nnx.Rngs) -> nnx.Param:
    """[max_len, dim] learned position embeddings (CLIP's text tower, PrefixLM)."""
    return nnx.Param(with_axes(nnx.initializers.normal(0.01), (None, "embed"))(rngs.params(), (max_len, dim)))


def token_embedding(num: int, dim: int, rngs: nnx.Rngs, axes=("vocab", "embed")) -> nnx.Embed:
    return nnx.Embed(
        num,
        dim,
        param_dtype=jnp.float32,
        embedding_init=with_axes(nnx.initializers.normal(0.02), axes),
        rngs=rngs,
    )


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Field names follow Hugging Face's BertConfig so a config.json maps directly."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    cross_attention_from: int | None = None  # ALBEF layout: layers >= this index attend to the image
    context_dim: int | None = None
    dtype: str = "float32"
    attention: str = "xla"  # the scale switches: see vlpjax.models.attention and .stack
    remat: str = "none"
    scan_layers: bool = False


class BertEncoder(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        dtype = jnp.dtype(c.dtype)
        self.out_dim = c.hidden_size
        self.word_embeddings = token_embedding(c.vocab_size, c.hidden_size, rngs)
        self.position_embeddings = token_embedding(c.max_position_embeddings, c.hidden_size, rngs, (None, "embed"))
        self.token_type_embeddings = token_embedding(c.type_vocab_size, c.hidden_size, rngs, (None, "embed"))
        self.ln_embed = layer_norm(c.hidden_size, eps=c.layer_norm_eps, rngs=rngs)
        first_cross = c.num_hidden_layers if c.cross_attention_from is None else c.cross_attention_from
        self.layers = nnx.List(
            [
                PostLNBlock(
                    c.hidden_size,
                    c.num_attention_heads,
                    c.intermediate_size,
                    act=c.hidden_act,
                    eps=c.layer_norm_eps,
                    context_dim=(c.context_dim or c.hidden_size) if i >= first_cross else None,
                    dtype=dtype,
                    attention=c.attention,
                    rngs=rngs,
                )
                for i in range(c.num_hidden_layers)
            ]
        )

    def embed(
        self, input_ids: jax.Array, token_type_ids: jax.Array | None = None, positions: jax.Array | None = None
    ) -> jax.Array:
        """Token, position and type embeddings, normalised. `positions` [B, L]: each token's
        position (decoding left-padded prompts); None: 0 .. L-1."""
        length = input_ids.shape[1]
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"text length {length} exceeds max_position_embeddings={self.config.max_position_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        table = self.position_embeddings.embedding[...]
        position = table[:length][None] if positions is None else jnp.take(table, positions, axis=0)
        x = self.word_embeddings(input_ids) + position + self.token_type_embeddings(token_type_ids)
        return self.ln_embed(x).astype(jnp.dtype(self.config.dtype))

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Hugging Face's calling convention: returns the last hidden state [B, L, D]."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        x = self._run(self.layers[: self.first_cross_layer], self.embed(input_ids, token_type_ids), attention_mask)
        return self._run(self.layers[self.first_cross_layer :], x, attention_mask, context, context_mask)

    def _run(self, layers, x, attention_mask, context=None, context_mask=None) -> jax.Array:
        """x through `layers` (all with cross-attention or all without: one structure to scan)."""
        mask = key_padding(attention_mask)
        ctx_mask = None if context_mask is None else key_padding(context_mask)
        c = self.config

        def layer_fn(layer, x):
            return layer(x, mask=mask, context=context, context_mask=ctx_mask)

        return run_stack(layers, x, layer_fn, remat=c.remat, scan=c.scan_layers)

    def encode(self, text_ids: jax.Array, text_mask: jax.Array) -> Encoded:
        """Unimodal encoding: only the text-only layers (all of them without cross-attention)."""
        tokens = self.text_layers(text_ids, text_mask)
        return Encoded(tokens=tokens, pooled=tokens[:, 0], mask=text_mask.astype(bool))

    @property
    def first_cross_layer(self) -> int:
        c = self.config
        return c.num_hidden_layers if c.cross_attention_from is None else c.cross_attention_from

    def text_layers(
        self, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array | None = None
    ) -> jax.Array:
        """ALBEF's text encoder: embeddings and the layers before cross-attention starts."""
        return self._run(self.layers[: self.first_cross_layer], self.embed(input_ids, token_type_ids), attention_mask)

    def fusion_layers(
        self, hidden: jax.Array, attention_mask: jax.Array, context: jax.Array, context_mask: jax.Array
    ) -> jax.Array:
        """ALBEF's fusion encoder: the remaining layers, attending to the image tokens."""
        return self._run(self.layers[self.first_cross_layer :], hidden, attention_mask, context, context_mask)


# Which position's feature is the text embedding (`pool`):
#   last_real: each row's last real token (right-padded text from the vlpjax tokenizer ends in [SEP])
#   eos:       the first position holding `eos_id` (CLIP)
#   argmax:    the position of the largest id (CLIP configs with the old eos_token_id=2)
#   first:     position 0 ([CLS])
#   last:      the final position, padded or not (SigLIP)
TEXT_POOLS = ("last_real", "eos", "argmax", "first", "last")


@dataclasses.dataclass(frozen=True)
class TextTransformerConfig:
    vocab_size: int = 49408
    width: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_dim: int = 2048
    max_len: int = 77
    act: str = "gelu"
    causal: bool = True  # CLIP's text tower; SigLIP's is bidirectional
    pool: str = "last_real"
    eos_id: int | None = None  # pool='eos'
    # False: padded positions are attended to like tokens (SigLIP was trained on texts padded to
    # its full length, without a mask); the embedding then depends on the pad id and the length.
    mask_padding: bool = True
    eps: float = 1e-5
    dtype: str = "float32"
    attention: str = "xla"
    remat: str = "none"
    scan_layers: bool = False

    def __post_init__(self):
        if self.pool not in TEXT_POOLS:
            raise ValueError(f"text pool must be one of {TEXT_POOLS}, got {self.pool!r}")
        if self.pool == "eos" and self.eos_id is None:
            raise ValueError("text pool='eos' needs eos_id")


def pooled_position(pool: str, ids: jax.Array, mask: jax.Array, eos_id: int | None) -> jax.Array:
    """[B] the position whose feature is each row's text embedding (see TEXT_POOLS)."""
    if pool == "last_real":
        return jnp.max(jnp.where(mask, jnp.arange(mask.shape[1])[None], 0), axis=1)
    if pool == "eos":
        return jnp.argmax(ids == eos_id, axis=1)
    if pool == "argmax":
        return jnp.argmax(ids, axis=1)
    return jnp.full(ids.shape[:1], 0 if pool == "first" else ids.shape[1] - 1)


class TextTransformer(nnx.Module):
    """A pre-LN text transformer: CLIP's causal tower or SigLIP's bidirectional one."""

    def __init__(self, config: TextTransformerConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        dtype = jnp.dtype(c.dtype)
        self.out_dim = c.width
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
        self.ln_final = layer_norm(c.width, eps=c.eps, rngs=rngs)

    def __call__(self, text_ids: jax.Array, text_mask: jax.Array | None = None) -> jax.Array:
        """[B, L] ids -> [B, L] features; position i sees the real positions (<= i when causal)."""
        length = text_ids.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"text length {length} exceeds the text tower's max_len={self.config.max_len}")
        if text_mask is None:
            text_mask = jnp.ones_like(text_ids)
        x = (self.token_embed(text_ids) + self.pos_embed[:length][None]).astype(jnp.dtype(self.config.dtype))
        c = self.config
        keys = text_mask.astype(bool) if c.mask_padding else jnp.ones(text_ids.shape, bool)
        mask = Mask(keys=keys, causal=c.causal)
        x = run_stack(self.blocks, x, lambda block, x: block(x, mask=mask), remat=c.remat, scan=c.scan_layers)
        return self.ln_final(x)

    def encode(self, text_ids: jax.Array, text_mask: jax.Array) -> Encoded:
        mask = text_mask.astype(bool)
        tokens = self(text_ids, mask)
        position = pooled_position(self.config.pool, text_ids, mask, self.config.eos_id)
        pooled = jnp.take_along_axis(tokens, position[:, None, None], axis=1)[:, 0]
        return Encoded(tokens=tokens, pooled=pooled, mask=mask)
