"""`init.hf`: towers that start from Hugging Face weights, loaded before the first step.

    init.hf.model = DIR   a whole CLIPModel / SiglipModel into a dual encoder
    init.hf.image = DIR   a CLIP / SigLIP vision tower or a ViTModel into model.image ('img/...')
    init.hf.text  = DIR   a BertModel (ALBEF, METER) or a CLIP / SigLIP text tower into model.text ('txt/...')

The recipe's tower must have the checkpoint's shape: each field is compared first, and a
difference stops the run naming the file and the field. A tower spec `{"kind": "hf"}` takes its
shape from the directory instead (plus the recipe's other fields, such as ALBEF's
cross_attention_from); an image tower's image size then becomes data.image_size, and a text
tower's tokenizer the directory's, unless data.tokenizer names one. The freeze rules apply as
usual, and init.checkpoint loads first, so init.hf wins where both name a parameter.
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
from vlpjax.interop.hf import bert_weights
from vlpjax.interop.safetensors_io import read_config, read_safetensors, strip_prefix
from vlpjax.interop.weight_tables import weights_from_table
from vlpjax.models.text import BertConfig, TextTransformerConfig
from vlpjax.models.vit import vit_config
from vlpjax.train import rules as rule_lib

HF_SLOTS = ("model", "image", "text")
TOWER_PATHS = {"image": ("img",), "text": ("txt",)}
SWITCHES = ("dtype", "attention", "remat", "scan_layers")
# Fields a recipe adds to a BERT that the checkpoint does not fix (ALBEF's fusion layers).
RECIPE_ONLY = ("cross_attention_from", "context_dim", "pad_token_id")


@dataclasses.dataclass
class HFTower:
    """What one init.hf entry holds: the spec of its tower(s) and its weights by vlpjax path."""

    slot: str
    where: str  # the config.json, for messages
    spec: dict
    weights: dict[str, np.ndarray]


def hf_sources(init: ml_collections.ConfigDict) -> dict[str, str]:
    hf = init.get("hf") or {}
    return {slot: hf[slot] for slot in HF_SLOTS if hf.get(slot)}


def _bert(path: str, where: str) -> HFTower:
    config, pairs = bert_weights(path)
    spec = {"kind": "bert", **{k: v for k, v in dataclasses.asdict(config).items() if k not in SWITCHES}}
    return HFTower("text", where, spec, {_name(("txt",) + p): v for p, v in pairs})


def _name(path: tuple) -> str:
    return "/".join(map(str, path))


def read_tower(slot: str, path: str) -> HFTower:
    """The spec and weights that init.hf.<slot> = `path` provides."""
    where = os.path.join(path, "config.json")
    if slot == "text" and read_config(path).get("model_type") == "bert":
        return _bert(path, where)
    config, family, holds, where = hf_clip.read_hf(path)
    tensors = read_safetensors(path)
    if slot == "model":
        if holds != "both" or family == "vit":
            raise InvalidInput(f"init.hf.model: {where} is not a whole CLIPModel or SiglipModel")
        spec = hf_clip.dual_encoder_spec(config, family, where)
        hf_clip.check_logit_scale(tensors, family, path)
        table = hf_clip.dual_encoder_table(family, spec)
    else:
        tower = "vision" if slot == "image" else "text"
        cfg = hf_clip.tower_config(config, family, holds, tower, where)
        if tower == "vision":
            spec = hf_clip.vision_spec(cfg, family)
            table = hf_clip.vision_table(family, spec["depth"])
        else:
            spec = hf_clip.text_spec(cfg, family)
            table = hf_clip.text_table(spec["depth"])
        # A whole model nests each tower (vision_model., text_model.; vit. in ViT task models);
        # transformers 5 saves a lone CLIPVisionModel / CLIPTextModel without the prefix.
        tensors = strip_prefix(tensors, {"vision": "vision_model.", "text": "text_model."}[tower])
        tensors = strip_prefix(tensors, "vit.")
        table = hf_clip.under(table, "", TOWER_PATHS[slot])
    pairs = weights_from_table(tensors, table, source=path)
    return HFTower(slot, where, spec, {_name(p): v for p, v in pairs})


# --- config: resolve kind="hf" towers, then compare shapes --------------------------------


def _tower_source(config: ml_collections.ConfigDict, slot: str) -> str:
    sources = hf_sources(config.init)
    path = sources.get(slot) or sources.get("model")
    if not path:
        raise ConfigError(f"model.{slot}.kind='hf' takes its shape from init.hf.{slot}, which is empty")
    return path


def _tower_spec(tower: HFTower, slot: str) -> dict:
    return tower.spec[slot] if tower.slot == "model" else tower.spec


def resolve_hf_towers(config: ml_collections.ConfigDict) -> None:
    """Replace each `{"kind": "hf", ...}` tower spec by the shape its init.hf directory has."""
    for slot in ("image", "text"):
        spec = config.model.get(slot)
        if spec is None or spec.get("kind") != "hf":
            continue
        path = _tower_source(config, slot)
        source = read_tower("model" if path == hf_sources(config.init).get("model") else slot, path)
        extra = {k: v for k, v in spec.items() if k != "kind"}
        with config.unlocked():
            config.model[slot] = ml_collections.ConfigDict({**_tower_spec(source, slot), **extra})
            if slot == "image":
                config.data.image_size = config.model.image.image_size
            elif not config.data.tokenizer:
                config.data.tokenizer = path


def _config_fields(spec: dict) -> dict:
    """The architecture a tower spec describes, as its config dataclass's fields."""
    spec = {k: v for k, v in spec.items() if k not in SWITCHES}
    kind = spec.pop("kind")
    if kind == "vit":
        fields = dataclasses.asdict(vit_config(spec.pop("variant", "B/16"), **spec))
    elif kind == "bert":
        fields = dataclasses.asdict(BertConfig(**spec))
        fields = {k: v for k, v in fields.items() if k not in RECIPE_ONLY}
    else:
        fields = dataclasses.asdict(TextTransformerConfig(causal=kind == "causal", **spec))
    return {"kind": kind, **{k: v for k, v in fields.items() if k not in SWITCHES}}


def _compare(what: str, where: str, ours: dict, theirs: dict) -> None:
    mine, hf = _config_fields(ours), _config_fields(theirs)
    for field, value in hf.items():
        if mine.get(field) != value:
            raise InvalidInput(
                f"{what}: {where} gives {field}={value!r}, the recipe's tower has {field}={mine.get(field)!r}; "
                "make them equal, or set the tower's kind='hf' to take the checkpoint's shape"
            )


def check_hf_towers(config: ml_collections.ConfigDict, vocab_size: int) -> list[HFTower]:
    """Read every init.hf entry and check that the recipe's towers have its shapes."""
    towers = [read_tower(slot, path) for slot, path in hf_sources(config.init).items()]
    for tower in towers:
        slots = ("image", "text") if tower.slot == "model" else (tower.slot,)
        if tower.slot == "model" and config.model.family != "dual_encoder":
            raise InvalidInput(f"init.hf.model loads a dual encoder; model.family is {config.model.family!r}")
        for slot in slots:
            ours = config.model[slot].to_dict()
            if slot == "text":
                ours["vocab_size"] = vocab_size  # the tokenizer's
            _compare(f"init.hf.{tower.slot} ({slot} tower)", tower.where, ours, _tower_spec(tower, slot))
        if tower.slot == "model":
            for key in ("embed_dim", "contrastive", "image_proj", "text_proj"):
                mine, hf = config.model.get(key, "linear" if key.endswith("proj") else None), tower.spec.get(key)
                hf = "linear" if hf is None and key.endswith("proj") else hf
                if mine != hf:
                    raise InvalidInput(f"init.hf.model: {tower.where} gives {key}={hf!r}, model.{key} is {mine!r}")
    return towers


def load_hf_towers(params, frozen, towers: list[HFTower]):
    """(params, frozen) with every init.hf weight written in; a weight the model lacks is an error."""
    weights = {name: value for tower in towers for name, value in tower.weights.items()}
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
