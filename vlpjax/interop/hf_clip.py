"""CLIP and SigLIP (and a plain ViT) to and from Hugging Face directories, without torch.

Three things per model type, each written once:

- a **spec**: the vlpjax tower or dual-encoder config that has exactly the HF model's shape
  (`vision_spec`, `text_spec`, `dual_encoder_spec`), read from config.json with transformers'
  defaults for the fields it leaves out;
- a **weight table** (interop/weight_tables.py) from HF tensor names to vlpjax paths, read in
  both directions;
- for export, the **folds** that turn a vlpjax choice HF lacks into HF's form exactly (a patch
  bias added to the position embeddings, a missing projection as the identity, ...). A choice
  that cannot be folded is refused before anything is written, naming the config field.
"""

from __future__ import annotations

import json
import math
import os
from typing import Iterable, Iterator

import numpy as np
from flax import nnx

from vlpjax.errors import InvalidInput
from vlpjax.interop.safetensors_io import (
    assign_weights,
    read_config,
    read_safetensors,
    save_hf_directory,
    variable_at,
)
from vlpjax.interop.weight_tables import (
    Layout,
    WeightEntry,
    tensors_from_table,
    torch_layer_norm,
    torch_linear,
    weights_from_table,
)
from vlpjax.models.layers import ACTIVATIONS, sincos_2d
from vlpjax.models.text import TextTransformer
from vlpjax.models.vit import ViT
from vlpjax.models.vlp import MAX_LOGIT_SCALE, DualEncoder, build_dual_encoder

# model_type in config.json -> (family, what the directory holds)
MODEL_TYPES = {
    "clip": ("clip", "both"),
    "clip_vision_model": ("clip", "vision"),
    "clip_text_model": ("clip", "text"),
    "siglip": ("siglip", "both"),
    "siglip_vision_model": ("siglip", "vision"),
    "siglip_text_model": ("siglip", "text"),
    "vit": ("vit", "vision"),
}

# transformers' defaults for the fields a config.json may leave out.
_DEFAULTS = {
    ("clip", "text"): dict(
        vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
        max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407,
    ),
    ("clip", "vision"): dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
        patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5, num_channels=3,
    ),
    ("siglip", "text"): dict(
        vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=64, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, projection_size=None,
    ),
    ("siglip", "vision"): dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
        patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, num_channels=3, vision_use_head=True,
    ),
    ("vit", "vision"): dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
        patch_size=16, hidden_act="gelu", layer_norm_eps=1e-12, num_channels=3, qkv_bias=True,
    ),
}  # fmt: skip

# In an exported SigLIP text_config: whether the tower masks padded keys (transformers then needs
# the attention_mask); SigLIP's own checkpoints do not (pad to max_position_embeddings, no mask).
MASK_FIELD = "vlpjax_mask_padding"

# Our activation names -> the name transformers' ACT2FN gives the same function.
_HF_ACTIVATION = {"gelu_tanh": "gelu_pytorch_tanh"}


# transformers' image processors' defaults: OpenAI's statistics for CLIP, 0.5 for SigLIP and ViT.
_PIXEL_STATS = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
PREPROCESSOR_FILE = "preprocessor_config.json"


def pixel_stats(path: str, family: str) -> tuple[tuple, tuple]:
    """(mean, std) the vision tower of `path` was trained with: its preprocessor_config.json,
    else the family's transformers default. vlpjax converts its own inputs to them (ViT's
    pixel_mean / pixel_std), so the tower sees what it was trained on."""
    file = os.path.join(path, PREPROCESSOR_FILE)
    if not os.path.isfile(file):
        return _PIXEL_STATS[family]
    try:
        with open(file) as f:
            processor = json.load(f)
    except ValueError as err:
        raise InvalidInput(f"{file} is not valid JSON: {err}") from None
    if not processor.get("do_normalize", True) or abs(processor.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
        raise InvalidInput(f"{file}: only rescale_factor=1/255 with do_normalize=true is supported")
    default_mean, default_std = _PIXEL_STATS[family]
    mean, std = processor.get("image_mean", default_mean), processor.get("image_std", default_std)
    if len(mean) != 3 or len(std) != 3:
        raise InvalidInput(f"{file}: image_mean and image_std need 3 values, got {mean} and {std}")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


class HFConfig:
    """One tower's config (a config.json or its text_config / vision_config), read with
    transformers' defaults; every complaint names the file and the field."""

    def __init__(self, values: dict, family: str, tower: str, where: str):
        self.values, self.defaults, self.where = values, _DEFAULTS[(family, tower)], where

    def __getitem__(self, name: str):
        return self.values[name] if self.values.get(name) is not None else self.defaults[name]

    def require(self, ok: bool, field: str, message: str) -> None:
        if not ok:
            raise InvalidInput(f"{self.where}: {field}={self[field]!r}: {message}")

    def integer(self, field: str) -> int:
        value = self[field]
        self.require(isinstance(value, int) and not isinstance(value, bool) and value > 0, field, "not a size")
        return value


def read_hf(path: str) -> tuple[dict, str, str, str]:
    """(config.json, family, what it holds, where) of a local HF directory of a known type."""
    config = read_config(path)
    where = os.path.join(path, "config.json")
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise InvalidInput(f"{where}: model_type={model_type!r} is not one of {sorted(MODEL_TYPES)}")
    return (config, *MODEL_TYPES[model_type], where)


def tower_config(config: dict, family: str, holds: str, tower: str, where: str) -> HFConfig:
    """The vision or text part of a config.json (a whole model nests them)."""
    if holds not in ("both", tower):
        raise InvalidInput(f"{where}: a {config.get('model_type')} directory has no {tower} tower")
    if holds != "both":
        return HFConfig(config, family, tower, where)
    # transformers lets an old-style `<tower>_config_dict` override `<tower>_config`.
    values = {**(config.get(f"{tower}_config") or {}), **(config.get(f"{tower}_config_dict") or {})}
    return HFConfig(values, family, tower, f"{where} ({tower}_config)")


# --- specs: HF config -> vlpjax config ----------------------------------------------------


def _activation(cfg: HFConfig) -> str:
    ours = {hf: name for name, hf in _HF_ACTIVATION.items()}.get(cfg["hidden_act"], cfg["hidden_act"])
    cfg.require(ours in ACTIVATIONS, "hidden_act", f"vlpjax has the activations {sorted(ACTIVATIONS)}")
    return ours


def _widths(cfg: HFConfig) -> dict:
    """The sizes every tower has, checked: whole numbers, heads that divide the width."""
    sizes = {f: cfg.integer(f) for f in ("hidden_size", "num_hidden_layers", "num_attention_heads")}
    cfg.require(
        sizes["hidden_size"] % sizes["num_attention_heads"] == 0,
        "hidden_size",
        f"not divisible by num_attention_heads={sizes['num_attention_heads']}",
    )
    return dict(
        width=sizes["hidden_size"],
        depth=sizes["num_hidden_layers"],
        num_heads=sizes["num_attention_heads"],
        mlp_dim=cfg.integer("intermediate_size"),
        act=_activation(cfg),
        eps=float(cfg["layer_norm_eps"]),
    )


def vision_spec(cfg: HFConfig, family: str, pixels: tuple = _PIXEL_STATS["siglip"]) -> dict:
    """The `model.image` spec of the HF vision tower: CLIP (class token, pre-LN, no patch bias),
    SigLIP (MAP head) or ViTModel (class token, patch bias). `pixels`: its (mean, std)."""
    cfg.require(cfg["num_channels"] == 3, "num_channels", "only RGB images are supported")
    if family == "siglip":
        cfg.require(cfg["vision_use_head"], "vision_use_head", "without its MAP head SigLIP has no pooled output")
    if family == "vit":
        cfg.require(cfg["qkv_bias"], "qkv_bias", "attention projections without bias are not supported")
    image_size, patch = cfg.integer("image_size"), cfg.integer("patch_size")
    cfg.require(image_size % patch == 0, "image_size", f"not a multiple of patch_size={patch}")
    layout = {
        "clip": dict(pool="cls", ln_pre=True, patch_bias=False, cls_posemb=True),
        "siglip": dict(pool="map", ln_pre=False, patch_bias=True, cls_posemb=False),
        "vit": dict(pool="cls", ln_pre=False, patch_bias=True, cls_posemb=True),
    }[family]
    return dict(
        kind="vit",
        variant=f"x/{patch}",
        image_size=image_size,
        posemb="learn",
        pixel_mean=pixels[0],
        pixel_std=pixels[1],
        **_widths(cfg),
        **layout,
    )


def text_spec(cfg: HFConfig, family: str) -> dict:
    """The `model.text` spec of a CLIP (causal, pooled at EOS) or SigLIP (bidirectional, pooled
    at the last position) text tower."""
    if family == "clip":
        eos = cfg["eos_token_id"]
        # transformers keeps CLIP's old rule (the largest id is the EOS) for eos_token_id=2.
        pooling = dict(kind="causal", pool="argmax") if eos == 2 else dict(kind="causal", pool="eos", eos_id=eos)
    else:  # SigLIP was trained on texts padded to max_position_embeddings, with no mask; vlpjax
        # exports of towers trained with masks say so in a field transformers ignores.
        pooling = dict(kind="bidirectional", pool="last", mask_padding=bool(cfg.values.get(MASK_FIELD, False)))
    return dict(
        vocab_size=cfg.integer("vocab_size"),
        max_len=cfg.integer("max_position_embeddings"),
        **_widths(cfg),
        **pooling,
    )


def dual_encoder_spec(config: dict, family: str, where: str, pixels: tuple = _PIXEL_STATS["siglip"]) -> dict:
    """The `model` spec (without the family) of a whole CLIPModel or SiglipModel."""
    vision = tower_config(config, family, "both", "vision", where)
    text = tower_config(config, family, "both", "text", where)
    image_spec, txt_spec = vision_spec(vision, family, pixels), text_spec(text, family)
    if family == "clip":
        embed_dim = config.get("projection_dim") or 512
        if not isinstance(embed_dim, int):
            raise InvalidInput(f"{where}: projection_dim={embed_dim!r} is not a size")
        return dict(image=image_spec, text=txt_spec, embed_dim=embed_dim, contrastive="softmax")
    embed_dim = image_spec["width"]  # SigLIP: the MAP head's output is the image embedding
    text.require(
        (text["projection_size"] or text["hidden_size"]) == embed_dim,
        "projection_size",
        f"SigLIP's text head must map to the image width {embed_dim}",
    )
    return dict(
        image=image_spec,
        text=txt_spec,
        embed_dim=embed_dim,
        contrastive="sigmoid",
        image_proj="none",
        text_proj="linear_bias",
    )


# --- weight tables -------------------------------------------------------------------------

CONV = Layout(lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1))  # [D,3,P,P] <-> [P,P,3,D]
ROWS = Layout(lambda v: v[None], lambda v: v[0])  # position table [N, D] <-> [1, N, D]
TOKEN = Layout(lambda v: v.reshape(1, 1, -1), lambda v: v.reshape(-1))  # class embedding [D] <-> [1, 1, D]
SCALAR = Layout(lambda v: v.reshape(()), lambda v: v.reshape(1))  # SigLIP's [1] <-> ()


def _pre_ln_layers(depth: int) -> Iterator[WeightEntry]:
    """CLIP / SigLIP encoder layers -> our PreLNBlocks."""
    for i in range(depth):
        hf, ours = f"encoder.layers.{i}", ("blocks", i)
        yield from torch_layer_norm(f"{hf}.layer_norm1", ours + ("ln_attn",))
        for hf_proj, proj in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"), ("out_proj", "out")):
            yield from torch_linear(f"{hf}.self_attn.{hf_proj}", ours + ("attn", proj))
        yield from torch_layer_norm(f"{hf}.layer_norm2", ours + ("ln_mlp",))
        yield from torch_linear(f"{hf}.mlp.fc1", ours + ("mlp", "fc1"))
        yield from torch_linear(f"{hf}.mlp.fc2", ours + ("mlp", "fc2"))


def _vit_layers(depth: int) -> Iterator[WeightEntry]:
    """ViTModel's encoder layers -> our PreLNBlocks."""
    for i in range(depth):
        hf, ours = f"encoder.layer.{i}", ("blocks", i)
        yield from torch_layer_norm(f"{hf}.layernorm_before", ours + ("ln_attn",))
        for proj in ("query", "key", "value"):
            yield from torch_linear(f"{hf}.attention.attention.{proj}", ours + ("attn", proj))
        yield from torch_linear(f"{hf}.attention.output.dense", ours + ("attn", "out"))
        yield from torch_layer_norm(f"{hf}.layernorm_after", ours + ("ln_mlp",))
        yield from torch_linear(f"{hf}.intermediate.dense", ours + ("mlp", "fc1"))
        yield from torch_linear(f"{hf}.output.dense", ours + ("mlp", "fc2"))


def _map_head() -> Iterator[WeightEntry]:
    """SigLIP's attention-pooling head: torch MultiheadAttention fuses q, k and v."""
    yield WeightEntry("head.probe", ("map_head", "probe"))
    for i, proj in enumerate(("query", "key", "value")):
        yield WeightEntry("head.attention.in_proj_weight", ("map_head", "attn", proj, "kernel"), True, (i, 3))
        yield WeightEntry("head.attention.in_proj_bias", ("map_head", "attn", proj, "bias"), False, (i, 3))
    yield from torch_linear("head.attention.out_proj", ("map_head", "attn", "out"))
    yield from torch_layer_norm("head.layernorm", ("map_head", "ln"))
    yield from torch_linear("head.mlp.fc1", ("map_head", "mlp", "fc1"))
    yield from torch_linear("head.mlp.fc2", ("map_head", "mlp", "fc2"))


def vision_table(family: str, depth: int) -> Iterator[WeightEntry]:
    """The vision tower's tensors, named relative to `vision_model.` (CLIP, SigLIP) or the model."""
    if family == "vit":
        yield WeightEntry("embeddings.patch_embeddings.projection.weight", ("patch_embed", "kernel"), layout=CONV)
        yield WeightEntry("embeddings.patch_embeddings.projection.bias", ("patch_embed", "bias"))
        yield WeightEntry("embeddings.cls_token", ("cls_token",))
        yield WeightEntry("embeddings.position_embeddings", ("pos_embed",))
        yield from _vit_layers(depth)
        yield from torch_layer_norm("layernorm", ("ln_final",))
        return
    yield WeightEntry("embeddings.patch_embedding.weight", ("patch_embed", "kernel"), layout=CONV)
    yield WeightEntry("embeddings.position_embedding.weight", ("pos_embed",), layout=ROWS)
    if family == "clip":
        yield WeightEntry("embeddings.class_embedding", ("cls_token",), layout=TOKEN)
        yield from torch_layer_norm("pre_layrnorm", ("ln_pre",))  # sic: transformers' name
    else:
        yield WeightEntry("embeddings.patch_embedding.bias", ("patch_embed", "bias"))
    yield from _pre_ln_layers(depth)
    yield from torch_layer_norm("post_layernorm", ("ln_final",))
    if family == "siglip":
        yield from _map_head()


def text_table(depth: int) -> Iterator[WeightEntry]:
    """A CLIP / SigLIP text tower's tensors, named relative to `text_model.`."""
    yield WeightEntry("embeddings.token_embedding.weight", ("token_embed", "embedding"))
    yield WeightEntry("embeddings.position_embedding.weight", ("pos_embed",))
    yield from _pre_ln_layers(depth)
    yield from torch_layer_norm("final_layer_norm", ("ln_final",))


def under(entries: Iterable[WeightEntry], hf_prefix: str, path: tuple) -> Iterator[WeightEntry]:
    """Entries moved below an HF name prefix and a vlpjax path."""
    for entry in entries:
        yield entry._replace(hf_name=hf_prefix + entry.hf_name, path=path + entry.path)


def dual_encoder_table(family: str, spec: dict) -> list[WeightEntry]:
    """Every tensor of a CLIPModel / SiglipModel of `spec` (a dual_encoder_spec)."""
    table = [
        *under(vision_table(family, spec["image"]["depth"]), "vision_model.", ("img",)),
        *under(text_table(spec["text"]["depth"]), "text_model.", ("txt",)),
    ]
    if family == "clip":
        table += [
            WeightEntry("visual_projection.weight", ("img_proj", "linear", "kernel"), transpose=True),
            WeightEntry("text_projection.weight", ("txt_proj", "linear", "kernel"), transpose=True),
            WeightEntry("logit_scale", ("logit_scale",)),
        ]
    else:
        table += [
            *torch_linear("text_model.head", ("txt_proj", "linear")),
            WeightEntry("logit_scale", ("logit_scale",), layout=SCALAR),
            WeightEntry("logit_bias", ("logit_bias",), layout=SCALAR),
        ]
    return table


# --- import ----------------------------------------------------------------------------------


def check_logit_scale(tensors: dict, family: str, path: str) -> None:
    """vlpjax caps CLIP's scale at 100 (transformers does not): a larger one is not representable."""
    if family == "clip" and "logit_scale" in tensors:
        value = float(np.asarray(tensors["logit_scale"]).reshape(()))
        if value > math.log(MAX_LOGIT_SCALE) + 1e-4:
            raise InvalidInput(
                f"{path}: logit_scale={value:.4f} exceeds log({MAX_LOGIT_SCALE:g}), the cap vlpjax's CLIP applies"
            )


def load_dual_encoder(path: str, *, dtype: str = "float32", seed: int = 0, **switches) -> DualEncoder:
    """A `DualEncoder` with the weights of the local HF `CLIPModel` or `SiglipModel` directory
    `path` (config.json + model.safetensors or a sharded index). `switches` sets the towers'
    scale switches (attention, remat, scan_layers)."""
    config, family, holds, where = read_hf(path)
    if holds != "both" or family == "vit":
        raise InvalidInput(f"{where}: model_type={config['model_type']!r} is not a whole CLIPModel or SiglipModel")
    spec = dual_encoder_spec(config, family, where, pixel_stats(path, family))
    towers = {"dtype": dtype, **switches}
    model = build_dual_encoder(
        {**spec, "image": {**spec["image"], **towers}, "text": {**spec["text"], **towers}}, rngs=nnx.Rngs(seed)
    )
    tensors = read_safetensors(path)
    check_logit_scale(tensors, family, path)
    assign_weights(model, weights_from_table(tensors, dual_encoder_table(family, spec), source=path), source=path)
    return model


# --- export ----------------------------------------------------------------------------------


def _refuse(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise InvalidInput(f"cannot export to Hugging Face exactly: {field}: {message}")


def _vision_config_to_hf(vit: ViT, family: str) -> dict:
    c = vit.config
    if family == "clip":
        _refuse(c.pool == "cls", "model.image.pool", f"CLIP pools the class token ('cls'), not {c.pool!r}")
        _refuse(c.ln_pre, "model.image.ln_pre", "CLIP's vision tower has a LayerNorm before its first block")
    else:
        _refuse(c.pool == "map", "model.image.pool", f"SigLIP pools with its MAP head ('map'), not {c.pool!r}")
        _refuse(not c.ln_pre, "model.image.ln_pre", "SigLIP's vision tower has no LayerNorm before its first block")
    values = dict(
        hidden_size=c.width, intermediate_size=c.mlp_dim, num_hidden_layers=c.depth, num_attention_heads=c.num_heads,
        image_size=c.image_size, patch_size=c.patch, num_channels=3, hidden_act=_HF_ACTIVATION.get(c.act, c.act),
        layer_norm_eps=c.eps,
    )  # fmt: skip
    head = {"vision_use_head": True} if family == "siglip" else {}
    return {"model_type": f"{family}_vision_model", **values, **head}


def _clip_eos(pool: str, eos_id: int | None, sep_id: int | None) -> int:
    """The eos_token_id that makes transformers pool where the vlpjax tower pools."""
    if pool == "argmax":
        return 2  # transformers' switch to the largest-id rule
    _refuse(
        pool in ("eos", "last_real"),
        "model.text.pool",
        f"CLIP pools at an EOS token; {pool!r} is not representable",
    )
    if pool == "eos":
        _refuse(eos_id != 2, "model.text.eos_id", "transformers reads eos_token_id=2 as the old largest-id rule")
        return int(eos_id)
    _refuse(sep_id is not None, "model.text.pool", "'last_real' exports with the tokenizer's [SEP] as EOS: none given")
    _refuse(sep_id != 2, "data.tokenizer", "its [SEP] has id 2, which transformers reads as the old largest-id rule")
    return int(sep_id)


def _text_config_to_hf(txt: TextTransformer, family: str, special: dict) -> dict:
    c = txt.config
    values = dict(
        vocab_size=c.vocab_size, hidden_size=c.width, intermediate_size=c.mlp_dim, num_hidden_layers=c.depth,
        num_attention_heads=c.num_heads, max_position_embeddings=c.max_len,
        hidden_act=_HF_ACTIVATION.get(c.act, c.act), layer_norm_eps=c.eps,
        **{k: v for k, v in special.items() if k in ("pad_token_id", "bos_token_id") and v is not None},
    )  # fmt: skip
    if family == "clip":
        _refuse(c.causal, "model.text.kind", "CLIP's text tower is causal ('causal')")
        eos = _clip_eos(c.pool, c.eos_id, special.get("eos_token_id"))
        return {"model_type": "clip_text_model", **values, "eos_token_id": eos}
    _refuse(not c.causal, "model.text.kind", "SigLIP's text tower is bidirectional ('bidirectional')")
    _refuse(c.pool == "last", "model.text.pool", f"SigLIP pools the last position ('last'), not {c.pool!r}")
    return {"model_type": "siglip_text_model", **values, MASK_FIELD: c.mask_padding}


def dual_encoder_config_to_hf(model: DualEncoder, special: dict) -> tuple[str, dict]:
    """(family, config.json) of the HF model that computes what `model` computes; refuses
    (InvalidInput naming the field) what HF cannot represent. `special`: the tokenizer's
    pad/bos/eos ids (eos = [SEP], where the causal tower pools)."""
    family = "clip" if model.contrastive == "softmax" else "siglip"
    _refuse(isinstance(model.img, ViT), "model.image.kind", "only a ViT image tower exports")
    _refuse(isinstance(model.txt, TextTransformer), "model.text.kind", "only a causal or bidirectional text tower")
    vision, text = _vision_config_to_hf(model.img, family), _text_config_to_hf(model.txt, family, special)
    embed_dim = model.img_proj.linear.kernel.shape[1] if model.img_proj.linear is not None else model.img.out_dim
    if family == "clip":
        _refuse(model.img_proj.kind != "linear_bias", "model.image_proj", "CLIP's projections have no bias")
        _refuse(model.txt_proj.kind != "linear_bias", "model.text_proj", "CLIP's projections have no bias")
        config = dict(architectures=["CLIPModel"], model_type="clip", projection_dim=embed_dim)
    else:
        _refuse(model.img_proj.kind == "none", "model.image_proj", "SigLIP's image embedding is its MAP head output")
        config = dict(architectures=["SiglipModel"], model_type="siglip")
        text["projection_size"] = embed_dim
    return family, {**config, "text_config": text, "vision_config": vision}


def _position_table(vit: ViT, family: str) -> np.ndarray:
    """HF's position embedding [1, N(+1), D] with the patch bias folded into the patch rows (CLIP
    has no patch bias) and a zero row for a class token that has no position of its own."""
    c = vit.config
    if c.posemb == "sincos2d":
        table = sincos_2d(c.grid, c.grid, c.width)[None]
    else:
        table = np.asarray(vit.pos_embed[...], np.float32)
    if family != "clip":
        return table
    if c.patch_bias:
        bias = np.asarray(vit.patch_embed.bias[...], np.float32)
        table = np.concatenate([table[:, :1], table[:, 1:] + bias], axis=1) if c.cls_posemb else table + bias
    if not c.cls_posemb:
        table = np.concatenate([np.zeros_like(table[:, :1]), table], axis=1)
    return table


def _projection(proj, in_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of a projection: 'none' is the identity, a missing bias is zero."""
    if proj.linear is None:
        return np.eye(in_dim, dtype=np.float32), np.zeros(in_dim, np.float32)
    kernel = np.asarray(proj.linear.kernel[...], np.float32)
    bias = np.asarray(proj.linear.bias[...], np.float32) if proj.linear.use_bias else np.zeros(kernel.shape[1])
    return kernel, bias.astype(np.float32)


def folded_values(model: DualEncoder, family: str) -> dict[tuple, np.ndarray]:
    """The HF-layout values that differ from, or are missing among, the model's parameters."""
    img_kernel, _ = _projection(model.img_proj, model.img.out_dim)
    txt_kernel, txt_bias = _projection(model.txt_proj, model.txt.out_dim)
    values = {
        ("img", "pos_embed"): _position_table(model.img, family),
        ("img_proj", "linear", "kernel"): img_kernel,
        ("txt_proj", "linear", "kernel"): txt_kernel,
    }
    if family == "clip":
        scale = min(float(model.logit_scale[...]), math.log(MAX_LOGIT_SCALE))  # the cap, applied once
        values[("logit_scale",)] = np.asarray(scale, np.float32)
    else:
        values[("txt_proj", "linear", "bias")] = txt_bias
        if not model.img.config.patch_bias:
            values[("img", "patch_embed", "bias")] = np.zeros(model.img.out_dim, np.float32)
    return values


def dual_encoder_tensors(model: DualEncoder, special: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json, tensors) of the HF CLIPModel / SiglipModel equal to `model`."""
    family, hf_config = dual_encoder_config_to_hf(model, special)
    pixels = (model.img.config.pixel_mean, model.img.config.pixel_std)
    spec = dual_encoder_spec(hf_config, family, "exported config", pixels)
    folded = folded_values(model, family)

    def value(path: tuple) -> np.ndarray:
        return folded[path] if path in folded else variable_at(model, path)[...]

    return hf_config, tensors_from_table(value, dual_encoder_table(family, spec))


def save_dual_encoder(model: DualEncoder, path: str, *, special: dict | None = None) -> None:
    """config.json + model.safetensors of the equivalent HF model in `path`; `special`: the
    tokenizer's bos/eos/pad ids (needed where the causal tower pools the last real token)."""
    save_hf_directory(path, *dual_encoder_tensors(model, special or {}))
