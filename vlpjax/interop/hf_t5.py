"""Hugging Face T5 encoders (T5EncoderModel, or the encoder of a T5 / FLAN-T5 / mT5 checkpoint)
into `vlpjax.models.t5.T5Encoder`: config.json fields and one weight table."""

from __future__ import annotations

from typing import Iterator

import numpy as np
from flax import nnx

from vlpjax.errors import InvalidInput
from vlpjax.interop.safetensors_io import assign_weights, read_config, read_safetensors
from vlpjax.interop.weight_tables import WeightEntry, weights_from_table
from vlpjax.models.t5 import FEED_FORWARD, T5Config, T5Encoder

T5_MODEL_TYPES = ("t5", "mt5")
_T5_CONFIG_FIELDS = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "layer_norm_epsilon",
)


def t5_config_from_hf(hf: dict, source: str, dtype: str = "float32") -> T5Config:
    if hf.get("model_type") not in T5_MODEL_TYPES:
        raise InvalidInput(f"{source}: expected a T5 checkpoint, config.json says model_type={hf.get('model_type')!r}")
    # v1.0 says "relu"; v1.1 and FLAN-T5 "gated-gelu" (older configs: feed_forward_proj absent = relu).
    projection = hf.get("feed_forward_proj", "relu")
    if projection not in FEED_FORWARD:
        raise InvalidInput(f"{source}: feed_forward_proj={projection!r} is not one of {sorted(FEED_FORWARD)}")
    return T5Config(**{k: hf[k] for k in _T5_CONFIG_FIELDS if k in hf}, feed_forward_proj=projection, dtype=dtype)


def _weight(hf_name: str, path: tuple) -> WeightEntry:
    """A bias-free torch Linear ([out, in]) or a norm / table stored as is."""
    return WeightEntry(hf_name, path, transpose=path[-1] == "kernel")


def t5_weight_table(config: T5Config) -> Iterator[WeightEntry]:
    yield _weight("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", ("position_bias",))
    for i in range(config.num_layers):
        hf, ours = f"encoder.block.{i}.layer", ("blocks", i)
        for proj in ("q", "k", "v", "o"):
            yield _weight(f"{hf}.0.SelfAttention.{proj}.weight", ours + ("attn", proj, "kernel"))
        yield _weight(f"{hf}.0.layer_norm.weight", ours + ("ln_attn", "scale"))
        gated, _ = FEED_FORWARD[config.feed_forward_proj]
        for name, part in (("wi_0", "wi"), ("wi_1", "wi_linear")) if gated else (("wi", "wi"),):
            yield _weight(f"{hf}.1.DenseReluDense.{name}.weight", ours + ("mlp", part, "kernel"))
        yield _weight(f"{hf}.1.DenseReluDense.wo.weight", ours + ("mlp", "wo", "kernel"))
        yield _weight(f"{hf}.1.layer_norm.weight", ours + ("ln_mlp", "scale"))
    yield _weight("encoder.final_layer_norm.weight", ("ln_final", "scale"))


def _token_table(tensors: dict[str, np.ndarray], source: str) -> np.ndarray:
    """The encoder's token embeddings: tied to `shared` (saved once under either name)."""
    for name in ("encoder.embed_tokens.weight", "shared.weight"):
        if name in tensors:
            return tensors[name]
    raise InvalidInput(f"{source}: neither shared.weight nor encoder.embed_tokens.weight is in the checkpoint")


def t5_weights(path: str, dtype: str = "float32") -> tuple[T5Config, list[tuple[tuple, np.ndarray]]]:
    """The config of the HF T5 directory `path` and its encoder weights as (T5Encoder path, value)."""
    config = t5_config_from_hf(read_config(path), path, dtype)
    tensors = read_safetensors(path)
    pairs = weights_from_table(tensors, t5_weight_table(config), source=path)
    return config, [*pairs, (("embed", "embedding"), _token_table(tensors, path))]


def load_t5_encoder(path: str, *, dtype: str = "float32", seed: int = 0) -> T5Encoder:
    """A T5Encoder with the weights of the local Hugging Face directory `path`; call it as
    `model(input_ids, attention_mask)` -> the last hidden state."""
    config, pairs = t5_weights(path, dtype)
    model = T5Encoder(config, rngs=nnx.Rngs(seed))
    assign_weights(model, pairs, source=path)
    return model
