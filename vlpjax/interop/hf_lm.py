"""Decoder LMs to and from Hugging Face directories (GPT-2, LLaMA / Mistral), without torch.

`load_decoder_lm(path)` reads config.json and model.safetensors (or a sharded index) and
returns a `DecoderLM`; `save_decoder_lm(model, path)` writes the same layout back, so a model
trained here loads with `transformers.AutoModelForCausalLM.from_pretrained(path)`.

Every weight is described once as (HF name, vlpjax path, layout) in a weight table (see
interop/weight_tables.py); loading and saving both read it. GPT-2 stores its Conv1D weights as
[in, out] (our layout) and fuses q, k and v into one `c_attn` tensor, which the table splits
into three column blocks.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import numpy as np
from flax import nnx

from vlpjax.errors import InvalidInput
from vlpjax.interop.safetensors_io import assign_weights, read_config, read_safetensors, save_hf_directory
from vlpjax.interop.weight_tables import (
    WeightEntry,
    dense_entries,
    norm_entries,
    tensors_from_table,
    weights_from_table,
)
from vlpjax.models.lm import DecoderLM, DecoderLMConfig

LLAMA_TYPES = ("llama", "mistral")


# --- config ------------------------------------------------------------------------------


def _require(condition: bool, path: str, message: str) -> None:
    if not condition:
        raise InvalidInput(f"{path}: {message}")


def decoder_config_from_hf(hf: dict, path: str = "config.json", dtype: str = "float32") -> DecoderLMConfig:
    model_type = hf.get("model_type")
    if model_type == "gpt2":
        _require(hf.get("scale_attn_weights", True), path, "GPT-2 with scale_attn_weights=False is not supported")
        _require(
            not hf.get("scale_attn_by_inverse_layer_idx", False),
            path,
            "scale_attn_by_inverse_layer_idx is not supported",
        )
        return DecoderLMConfig(
            arch="gpt2",
            vocab_size=hf["vocab_size"],
            hidden_size=hf["n_embd"],
            num_layers=hf["n_layer"],
            num_heads=hf["n_head"],
            intermediate_size=hf.get("n_inner") or 4 * hf["n_embd"],
            max_positions=hf["n_positions"],
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=hf.get("tie_word_embeddings", True),
            act=hf.get("activation_function", "gelu_new"),
            dtype=dtype,
        )
    if model_type in LLAMA_TYPES:
        rope = hf.get("rope_parameters") or {}
        _require(
            rope.get("rope_type", "default") == "default" and not hf.get("rope_scaling"),
            path,
            f"only plain rotary embeddings are supported, got {rope or hf.get('rope_scaling')}",
        )
        _require(not hf.get("mlp_bias", False), path, "mlp_bias=True is not supported")
        _require(hf.get("sliding_window") is None, path, "sliding-window attention is not supported")
        return DecoderLMConfig(
            arch="llama",
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads"),
            head_dim=hf.get("head_dim"),
            intermediate_size=hf["intermediate_size"],
            max_positions=hf.get("max_position_embeddings", 2048),
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            attention_bias=hf.get("attention_bias", False),
            act=hf.get("hidden_act", "silu"),
            dtype=dtype,
        )
    raise InvalidInput(
        f"{path}: model_type {model_type!r} is not a supported decoder LM; supported: gpt2, {', '.join(LLAMA_TYPES)}"
    )


def decoder_config_to_hf(c: DecoderLMConfig) -> dict:
    if c.arch == "gpt2":
        return dict(
            architectures=["GPT2LMHeadModel"], model_type="gpt2", vocab_size=c.vocab_size, n_embd=c.hidden_size,
            n_layer=c.num_layers, n_head=c.num_heads, n_inner=c.intermediate_size, n_positions=c.max_positions,
            layer_norm_epsilon=c.norm_eps, activation_function=c.act_name, tie_word_embeddings=c.tie_embeddings,
        )  # fmt: skip
    return dict(
        architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=c.vocab_size, hidden_size=c.hidden_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.kv_heads,
        head_dim=c.dims_per_head, intermediate_size=c.intermediate_size, max_position_embeddings=c.max_positions,
        rms_norm_eps=c.norm_eps,
        rope_theta=c.rope_theta,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        tie_word_embeddings=c.tie_embeddings, attention_bias=c.has_bias, mlp_bias=False, hidden_act=c.act_name,
    )  # fmt: skip


# --- weight tables -----------------------------------------------------------------------


def gpt2_weights(c: DecoderLMConfig) -> Iterator[WeightEntry]:
    yield WeightEntry("transformer.wte.weight", ("embed_tokens",))
    yield WeightEntry("transformer.wpe.weight", ("pos_embed",))
    for i in range(c.num_layers):
        hf, ours = f"transformer.h.{i}", ("blocks", i)
        yield from norm_entries(f"{hf}.ln_1", ours + ("ln_attn",), bias=True)
        for j, proj in enumerate(("query", "key", "value")):
            yield from dense_entries(f"{hf}.attn.c_attn", ours + ("attn", proj), True, False, part=(j, 3))
        yield from dense_entries(f"{hf}.attn.c_proj", ours + ("attn", "out"), True, False)
        yield from norm_entries(f"{hf}.ln_2", ours + ("ln_mlp",), bias=True)
        yield from dense_entries(f"{hf}.mlp.c_fc", ours + ("mlp", "fc1"), True, False)
        yield from dense_entries(f"{hf}.mlp.c_proj", ours + ("mlp", "fc2"), True, False)
    yield from norm_entries("transformer.ln_f", ("ln_final",), bias=True)
    if not c.tie_embeddings:
        yield WeightEntry("lm_head.weight", ("lm_head",))


def llama_weights(c: DecoderLMConfig) -> Iterator[WeightEntry]:
    yield WeightEntry("model.embed_tokens.weight", ("embed_tokens",))
    for i in range(c.num_layers):
        hf, ours = f"model.layers.{i}", ("blocks", i)
        yield from norm_entries(f"{hf}.input_layernorm", ours + ("ln_attn",), bias=False)
        for hf_proj, proj in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"), ("o_proj", "out")):
            yield from dense_entries(f"{hf}.self_attn.{hf_proj}", ours + ("attn", proj), c.has_bias, True)
        yield from norm_entries(f"{hf}.post_attention_layernorm", ours + ("ln_mlp",), bias=False)
        for name in ("gate", "up", "down"):
            yield from dense_entries(f"{hf}.mlp.{name}_proj", ours + ("mlp", name), False, True)
    yield from norm_entries("model.norm", ("ln_final",), bias=False)
    if not c.tie_embeddings:
        yield WeightEntry("lm_head.weight", ("lm_head",))


def weight_table(c: DecoderLMConfig) -> list[WeightEntry]:
    return list(gpt2_weights(c) if c.arch == "gpt2" else llama_weights(c))


def _with_prefix(tensors: dict[str, np.ndarray], c: DecoderLMConfig) -> dict[str, np.ndarray]:
    """Base-model checkpoints (GPT2Model, LlamaModel) drop the `transformer.` / `model.` prefix."""
    prefix = "transformer." if c.arch == "gpt2" else "model."
    if any(k.startswith(prefix) for k in tensors):
        return tensors
    return {(k if k.startswith("lm_head.") else prefix + k): v for k, v in tensors.items()}


# --- load and save -----------------------------------------------------------------------


def load_decoder_lm(path: str, *, dtype: str = "float32", seed: int = 0, **switches) -> DecoderLM:
    """A `DecoderLM` with the weights of the local Hugging Face directory `path`.

    Call it as `model(input_ids, attention_mask=None)` -> logits [B, L, V]. `switches` sets the
    scale switches of its config (attention, remat, scan_layers).
    """
    config = decoder_config_from_hf(read_config(path), os.path.join(path, "config.json"), dtype)
    config = dataclasses.replace(config, **switches)
    tensors = _with_prefix(read_safetensors(path), config)
    pairs = weights_from_table(tensors, weight_table(config), source=path)
    model = DecoderLM(config, rngs=nnx.Rngs(seed))
    assign_weights(model, pairs, source=path)
    return model


def decoder_lm_tensors(model: DecoderLM) -> dict[str, np.ndarray]:
    """The model's weights under their Hugging Face names and layouts."""
    return tensors_from_table(model, weight_table(model.config))


def save_decoder_lm(model: DecoderLM, path: str, *, extra_config: dict | None = None) -> None:
    """config.json + model.safetensors in `path`, each written to a temporary name first."""
    hf_config = {**decoder_config_to_hf(model.config), **(extra_config or {})}
    save_hf_directory(path, hf_config, decoder_lm_tensors(model))
