"""Import Hugging Face weights from a local directory: config.json plus safetensors.

No torch and no network: tensors are read with `safetensors.numpy` and copied into the
matching vlpjax parameters, with every shape checked before anything is written.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from flax import nnx

from vlpjax.errors import InvalidInput
from vlpjax.interop.hf_clip import load_dual_encoder, save_dual_encoder  # noqa: F401 - the public import path
from vlpjax.interop.hf_lm import load_decoder_lm, save_decoder_lm  # noqa: F401 - the public import path
from vlpjax.interop.hf_t5 import T5_MODEL_TYPES, load_t5_encoder
from vlpjax.interop.safetensors_io import assign_weights, read_config, read_safetensors, strip_prefix
from vlpjax.interop.weight_tables import WeightEntry, torch_layer_norm, torch_linear, weights_from_table
from vlpjax.models.t5 import T5Encoder
from vlpjax.models.text import BertConfig, BertEncoder

# --- BERT ---------------------------------------------------------------------------------

_BERT_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "hidden_act",
    "pad_token_id",
)


def bert_config_from_hf(hf: dict, dtype: str = "float32") -> BertConfig:
    if hf.get("model_type", "bert") != "bert":
        raise InvalidInput(f"expected a BERT checkpoint, config.json says model_type={hf.get('model_type')!r}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise InvalidInput(f"only absolute position embeddings are supported, got {hf['position_embedding_type']!r}")
    return BertConfig(**{k: hf[k] for k in _BERT_CONFIG_FIELDS if k in hf}, dtype=dtype)


def bert_weight_map(num_layers: int) -> Iterator[WeightEntry]:
    """The weight table of a BERT encoder."""
    yield WeightEntry("embeddings.word_embeddings.weight", ("word_embeddings", "embedding"))
    yield WeightEntry("embeddings.position_embeddings.weight", ("position_embeddings", "embedding"))
    yield WeightEntry("embeddings.token_type_embeddings.weight", ("token_type_embeddings", "embedding"))
    yield from torch_layer_norm("embeddings.LayerNorm", ("ln_embed",))
    for i in range(num_layers):
        hf, ours = f"encoder.layer.{i}", ("layers", i)
        for proj in ("query", "key", "value"):
            yield from torch_linear(f"{hf}.attention.self.{proj}", ours + ("attn", proj))
        yield from torch_linear(f"{hf}.attention.output.dense", ours + ("attn", "out"))
        yield from torch_layer_norm(f"{hf}.attention.output.LayerNorm", ours + ("ln_attn",))
        yield from torch_linear(f"{hf}.intermediate.dense", ours + ("mlp", "fc1"))
        yield from torch_linear(f"{hf}.output.dense", ours + ("mlp", "fc2"))
        yield from torch_layer_norm(f"{hf}.output.LayerNorm", ours + ("ln_mlp",))


def _legacy_layer_norm_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Old TF-converted checkpoints call LayerNorm weight/bias gamma/beta."""
    renamed = {}
    for k, v in tensors.items():
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        renamed[k] = v
    return renamed


def bert_weights(path: str, dtype: str = "float32") -> tuple[BertConfig, list[tuple[tuple, np.ndarray]]]:
    """The config of the HF BERT directory `path` and its weights as (BertEncoder path, value)."""
    config = bert_config_from_hf(read_config(path), dtype=dtype)
    tensors = _legacy_layer_norm_names(strip_prefix(read_safetensors(path), "bert."))
    return config, weights_from_table(tensors, bert_weight_map(config.num_hidden_layers), source=path)


def load_text_encoder(path: str, *, dtype: str = "float32", seed: int = 0) -> BertEncoder | T5Encoder:
    """The text encoder of the local Hugging Face directory `path`, by its config.json's
    model_type: a BertEncoder (bert), called as `model(input_ids, attention_mask,
    token_type_ids=None)`, or a T5Encoder (t5, mt5), `model(input_ids, attention_mask)`; both
    return the last hidden state.
    """
    if read_config(path).get("model_type") in T5_MODEL_TYPES:
        return load_t5_encoder(path, dtype=dtype, seed=seed)
    config, pairs = bert_weights(path, dtype=dtype)
    model = BertEncoder(config, rngs=nnx.Rngs(seed))
    assign_weights(model, pairs, source=path)
    return model
