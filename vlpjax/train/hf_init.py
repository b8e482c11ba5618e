"""`init.hf`: towers that start from Hugging Face weights, loaded before the first step.

    init.hf.model = DIR   a whole CLIPModel / SiglipModel into a dual encoder
    init.hf.image = DIR   a CLIP / SigLIP vision tower or a ViTModel into model.image ('img/...')
    init.hf.text  = DIR   a BertModel (ALBEF, METER), a T5 encoder (model_type t5 / mt5) or a CLIP /
                          SigLIP text tower into model.text ('txt/...')

The recipe's tower must have the checkpoint's shape: each field is compared first, and a
difference stops the run naming the file and the field. A tower of kind 'hf'
(`--config.model.image.kind=hf`) takes its shape from the directory instead, keeping only the
recipe's scale switches and the fields a checkpoint does not fix (ALBEF's cross_attention_from).
Then an image tower sets data.image_size; a text tower's directory becomes data.tokenizer unless
one is named, and SigLIP's (trained unmasked) sets data.text_len to its full length; with
init.hf.model, embed_dim, contrastive and the projections come from the checkpoint too. An image
tower always takes the checkpoint's pixel normalisation (ViT pixel_mean / pixel_std). The freeze
rules apply as usual; init.checkpoint loads first, so init.hf wins where both name a parameter.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlpjax.config import ConfigError
from vlpjax.errors import InvalidInput
from vlpjax.interop import hf_clip
from vlpjax.interop.hf import bert_config_from_hf, bert_weights
from vlpjax.interop.hf_t5 import T5_MODEL_TYPES, t5_config_from_hf, t5_weights
from vlpjax.interop.safetensors_io import read_config, read_safetensors, strip_prefix
from vlpjax.interop.weight_tables import weights_from_table
from vlpjax.models.t5 import T5Config
from vlpjax.models.text import BertConfig, TextTransformerConfig
from vlpjax.models.vit import vit_config
from vlpjax.train import rules as rule_lib

HF_SLOTS = ("model", "image", "text")
# Text encoders read by their own weight tables (the rest are CLIP / SigLIP towers).
TEXT_ENCODER_WEIGHTS = {"bert": bert_weights, "t5": t5_weights}
TOWER_PATHS = {"image": ("img",), "text": ("txt",)}
SWITCHES = ("dtype", "attention", "remat", "scan_layers")
# Fields a recipe sets that a checkpoint does not fix (ALBEF's fusion layers, the pad id, the
# input normalisation, which always comes from the checkpoint).
RECIPE_ONLY = ("cross_attention_from", "context_dim", "pad_token_id", "pixel_mean", "pixel_std")
MODEL_FIELDS = {"embed_dim": None, "contrastive": "softmax", "image_proj": "linear", "text_proj": "linear"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model")


@dataclasses.dataclass
class HFSource:
    """One init.hf entry: its slot, its directory and the spec of the tower(s) it holds."""

    slot: str
    path: str
    where: str  # the config.json, for messages
    family: str  # clip | siglip | vit | bert
    spec: dict

    def tower(self, slot: str) -> dict:
        return self.spec[slot] if self.slot == "model" else self.spec


def hf_sources(init: ml_collections.ConfigDict) -> dict[str, str]:
    hf = init.get("hf") or {}
    return {slot: hf[slot] for slot in HF_SLOTS if hf.get(slot)}


def read_source(slot: str, path: str) -> HFSource:
    """The spec init.hf.<slot> = `path` provides (config.json and preprocessor_config.json only)."""
    try:
        config = read_config(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"init.hf.{slot}: {err}") from None
    where = os.path.join(path, "config.json")
    if slot == "text" and config.get("model_type") == "bert":
        bert = bert_config_from_hf(config)
        spec = {"kind": "bert", **{k: v for k, v in dataclasses.asdict(bert).items() if k not in SWITCHES}}
        return HFSource(slot, path, where, "bert", spec)
    if slot == "text" and config.get("model_type") in T5_MODEL_TYPES:
        t5 = t5_config_from_hf(config, where)
        spec = {"kind": "t5", **{k: v for k, v in dataclasses.asdict(t5).items() if k not in SWITCHES}}
        return HFSource(slot, path, where, "t5", spec)
    config, family, holds, where = hf_clip.read_hf(path)
    if slot == "model":
        if holds != "both" or family == "vit":
            raise InvalidInput(f"init.hf.model: {where} is not a whole CLIPModel or SiglipModel")
        spec = hf_clip.dual_encoder_spec(config, family, where, hf_clip.pixel_stats(path, family))
    elif slot == "image":
        cfg = hf_clip.tower_config(config, family, holds, "vision", where)
        spec = hf_clip.vision_spec(cfg, family, hf_clip.pixel_stats(path, family))
    else:
        spec = hf_clip.text_spec(hf_clip.tower_config(config, family, holds, "text", where), family)
    return HFSource(slot, path, where, family, spec)


def source_weights(source: HFSource) -> dict[str, np.ndarray]:
    """The source's weights by vlpjax path string ('img/blocks/0/attn/query/kernel')."""
    if source.family in TEXT_ENCODER_WEIGHTS:
        _, pairs = TEXT_ENCODER_WEIGHTS[source.family](source.path)
        return {_name(("txt",) + p): v for p, v in pairs}
    tensors = read_safetensors(source.path)
    if source.slot == "model":
        hf_clip.check_logit_scale(tensors, source.family, source.path)
        table = hf_clip.dual_encoder_table(source.family, source.spec)
    else:
        tower = "vision" if source.slot == "image" else "text"
        depth = source.spec["depth"]
        table = hf_clip.vision_table(source.family, depth) if tower == "vision" else hf_clip.text_table(depth)
        # A whole model nests each tower (vision_model., text_model.; vit. in ViT task models);
        # transformers 5 saves a lone CLIPVisionModel / CLIPTextModel without the prefix.
        tensors = strip_prefix(tensors, {"vision": "vision_model.", "text": "text_model."}[tower])
        tensors = strip_prefix(tensors, "vit.")
        table = hf_clip.under(table, "", TOWER_PATHS[source.slot])
    return {_name(p): v for p, v in weights_from_table(tensors, table, source=source.path)}


def _name(path: tuple) -> str:
    return "/".join(map(str, path))


# --- config: resolve kind="hf" towers -------------------------------------------------------


def _has_tokenizer(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES)


def _resolve_tower(config: ml_collections.ConfigDict, slot: str, source: HFSource) -> None:
    recipe = config.model[slot].to_dict()
    kept = {k: v for k, v in recipe.items() if k in SWITCHES + RECIPE_ONLY}
    config.model[slot] = ml_collections.ConfigDict({**source.tower(slot), **kept})
    if slot == "image":
        config.data.image_size = config.model.image.image_size
        return
    if not config.data.tokenizer:
        if not _has_tokenizer(source.path):
            raise ConfigError(f"init.hf.{source.slot} {source.path!r} has no tokenizer files: set data.tokenizer")
        config.data.tokenizer = source.path
    if not source.tower(slot).get("mask_padding", True):
        config.data.text_len = source.tower(slot)["max_len"]  # the length it was trained padded to


def resolve_hf_towers(config: ml_collections.ConfigDict) -> None:
    """Towers of kind 'hf' take their init.hf directory's shape; every image tower loaded from
    HF takes its pixel normalisation (see the module docstring)."""
    sources = {slot: read_source(slot, path) for slot, path in hf_sources(config.init).items()}  # each read once
    with config.unlocked():
        for slot in ("image", "text"):
            spec = config.model.get(slot)
            if not isinstance(spec, ml_collections.ConfigDict):
                continue
            source = sources.get(slot) or sources.get("model")
            if spec.get("kind") == "hf":
                if source is None:
                    raise ConfigError(f"model.{slot}.kind='hf' takes its shape from init.hf.{slot}, which is empty")
                _resolve_tower(config, slot, source)
            elif slot == "image" and source is not None and spec.get("kind") == "vit":
                tower = source.tower("image")
                config.model.image.pixel_mean, config.model.image.pixel_std = tower["pixel_mean"], tower["pixel_std"]
        if "model" in sources and config.model.family == "dual_encoder":
            for key in MODEL_FIELDS:
                config.model[key] = sources["model"].spec.get(key, MODEL_FIELDS[key])


# --- shapes: the recipe's towers against the checkpoints' ------------------------------------


def _config_fields(spec: dict, where: str) -> dict:
    """The architecture a tower spec describes, as its config dataclass's fields."""
    spec = {k: v for k, v in spec.items() if k not in SWITCHES}
    kind = spec.pop("kind")
    if kind == "vit":
        fields = dataclasses.asdict(vit_config(spec.pop("variant", "B/16"), **spec))
    elif kind == "bert":
        fields = dataclasses.asdict(BertConfig(**spec))
    elif kind in ("causal", "bidirectional"):
        fields = dataclasses.asdict(TextTransformerConfig(causal=kind == "causal", **spec))
    elif kind == "t5":
        fields = dataclasses.asdict(T5Config(**spec))
    else:
        raise InvalidInput(f"{where}: a tower of kind {kind!r} cannot take Hugging Face weights")
    return {k: v for k, v in fields.items() if k not in SWITCHES + RECIPE_ONLY}


def _same_pooling(mine: dict, hf: dict, sep_id: int | None) -> bool:
    """vlpjax's tokenizer ends every text in [SEP]: pooling the last real token is pooling it."""
    return mine.get("pool") == "last_real" and hf.get("pool") == "eos" and hf.get("eos_id") == sep_id


def _compare(what: str, source: HFSource, ours: dict, theirs: dict, sep_id: int | None) -> None:
    if ours.get("kind") != theirs["kind"]:
        raise InvalidInput(
            f"{what}: {source.where} holds a {theirs['kind']!r} tower, the recipe's is {ours.get('kind')!r}"
        )
    mine, hf = _config_fields(ours, source.where), _config_fields(theirs, source.where)
    if _same_pooling(mine, hf, sep_id):
        hf.update(pool="last_real", eos_id=mine.get("eos_id"))
    for field, value in hf.items():
        if mine.get(field) != value:
            raise InvalidInput(
                f"{what}: {source.where} gives {field}={value!r}, the recipe's tower has {field}={mine.get(field)!r}; "
                "make them equal, or set the tower's kind='hf' to take the checkpoint's shape"
            )


def check_hf_towers(config: ml_collections.ConfigDict, vocab_size: int, sep_id: int | None = None) -> list[HFSource]:
    """Every init.hf entry, checked: the recipe's towers must have its shapes."""
    sources = [read_source(slot, path) for slot, path in hf_sources(config.init).items()]
    for source in sources:
        if source.slot == "model" and config.model.family != "dual_encoder":
            raise InvalidInput(f"init.hf.model loads a dual encoder; model.family is {config.model.family!r}")
        for slot in ("image", "text") if source.slot == "model" else (source.slot,):
            if slot not in config.model:
                raise InvalidInput(f"init.hf.{source.slot}: model.family={config.model.family!r} has no {slot} tower")
            ours = config.model[slot].to_dict()
            if slot == "text":
                ours["vocab_size"] = vocab_size  # the tokenizer's
            _compare(f"init.hf.{source.slot} ({slot} tower)", source, ours, source.tower(slot), sep_id)
        if source.slot == "model":
            for key, default in MODEL_FIELDS.items():
                mine, hf = config.model.get(key, default), source.spec.get(key, default)
                if mine != hf:
                    raise InvalidInput(f"init.hf.model: {source.where} gives {key}={hf!r}, model.{key} is {mine!r}")
    return sources


def load_hf_towers(params, frozen, sources: list[HFSource]):
    """(params, frozen) with every init.hf weight written in; a weight the model lacks is an error."""
    weights = {name: value for source in sources for name, value in source_weights(source).items()}
    found = set()

    def take(path, current):
        key = rule_lib.path_string(path)
        if key not in weights:
            return current
        found.add(key)
        if tuple(weights[key].shape) != tuple(current.shape):
            raise InvalidInput(
                f"init.hf weight for {key} has shape {tuple(weights[key].shape)}, the model's {tuple(current.shape)}"
            )
        return jnp.asarray(weights[key], current.dtype)

    params, frozen = jax.tree_util.tree_map_with_path(take, params), jax.tree_util.tree_map_with_path(take, frozen)
    missing = sorted(set(weights) - found)
    if missing:
        raise InvalidInput(f"init.hf names weights the model does not have, e.g. {missing[:3]}")
    return params, frozen
