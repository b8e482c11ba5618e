"""Recipe configs: load `configs/<recipe>.py[:args]`, apply `--config.key=value` overrides, validate.

A recipe file defines `get_config(arg: str | None) -> ml_collections.ConfigDict`. Configs are
locked after loading, so a misspelt override stops with the key's name before anything is built.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
from typing import Sequence

import ml_collections

from vlpjax import taxonomy
from vlpjax.errors import UserError

REQUIRED_SECTIONS = ("data", "model", "objectives", "optim", "train", "mesh")
PARALLELISMS = ("mesh", "pmap")


class ConfigError(UserError, ValueError):
    """A config problem found before anything was built; the message names the culprit."""


def _recipe_module(path: str):
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"vlpjax_recipe_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config()")
    return module


# The arguments a recipe takes after its ':' unless it lists its own in a module-level ARGS.
DEFAULT_RECIPE_ARGS = ("tiny",)


def load_recipe(spec: str) -> ml_collections.ConfigDict:
    """'configs/clip_shapes.py' or 'configs/clip_shapes.py:arg' -> ConfigDict."""
    path, _, arg = spec.partition(":")
    module = _recipe_module(path)
    known = tuple(getattr(module, "ARGS", DEFAULT_RECIPE_ARGS))
    if arg and arg not in known:
        raise ConfigError(f"config file {path!r} takes no argument {arg!r}; it knows {known}")
    config = module.get_config(arg or None)
    config.lock()
    return config


def base_recipe(recipe_file: str, name: str):
    """The module of the recipe `<name>.py` beside `recipe_file`, for recipes that extend it."""
    return _recipe_module(os.path.join(os.path.dirname(os.path.abspath(recipe_file)), f"{name}.py"))


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string


def _coerce(value, current, key: str):
    """Convert `value` to the type of the field it replaces, or fail naming the key."""
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"--config.{key} must be a bool (True/False), got {value!r}")
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(current, int) and isinstance(value, float) and not value.is_integer():
                raise ConfigError(f"--config.{key} must be an int, got {value!r}")
            return type(current)(value)
        raise ConfigError(f"--config.{key} must be a number, got {value!r}")
    if isinstance(current, str):
        if isinstance(value, str):
            return value
        raise ConfigError(f"--config.{key} must be a string, got {value!r}")
    if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(current)(value)
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"--config.{key} is a section; set its fields, e.g. --config.{key}.<field>=...")
    return value


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r} (from --config.{key})")
        node = node[part]
    leaf = parts[-1]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ConfigError(f"unknown config key {key!r}; known keys here: {known}")
    value = _coerce(_parse_value(text), node[leaf], key)
    with node.unlocked():
        try:
            node[leaf] = value
        except TypeError as err:
            raise ConfigError(f"--config.{key}: {err}") from None


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """`["--config.train.steps=10", ...]` (or without the `--config.` prefix)."""
    for item in overrides:
        body = item[len("--config.") :] if item.startswith("--config.") else item
        if "=" not in body:
            raise ConfigError(f"override {item!r} must look like --config.key=value")
        key, text = body.split("=", 1)
        apply_override(config, key, text)
    return config


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    missing = [s for s in REQUIRED_SECTIONS if s not in config]
    if missing:
        raise ConfigError(f"config is missing sections {missing}")
    if config.train.parallelism not in PARALLELISMS:
        raise ConfigError(f"train.parallelism must be one of {PARALLELISMS}, got {config.train.parallelism!r}")
    _validate_train(config)
    _resolve_hf_towers(config)
    _validate_scale_switches(config)
    if not config.objectives:
        raise ConfigError("objectives is empty: name at least one objective with a weight")
    _validate_objectives(config)
    _validate_evals(config)
    _validate_devices(config)
    _validate_rename(config)
    return config


def _validate_rename(config: ml_collections.ConfigDict) -> None:
    """init.rename: (our prefix, the checkpoint's prefix) pairs of strings."""
    rename = config.get("init", {}).get("rename", ())
    pairs = isinstance(rename, (list, tuple)) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in rename
    )
    if not pairs:
        raise ConfigError(
            f"init.rename must be (our prefix, the checkpoint's prefix) pairs, e.g. (('img/detector/', ''),); "
            f"got {rename!r}"
        )


def evaluator(kind: str, **options) -> dict:
    """One entry of a recipe's `evals` section: every option of `kind` at its default, then
    `options`, so any of them can be overridden from the command line."""
    if kind not in taxonomy.EVAL_KINDS:
        raise ConfigError(f"evaluator kind must be one of {tuple(taxonomy.EVAL_KINDS)}, got {kind!r}")
    return {"kind": kind, **taxonomy.EVAL_OPTIONS, **taxonomy.EVAL_KINDS[kind].options, **options}


RESERVED_EVAL_NAMES = ("train",)  # its metrics would mix with the training metrics
# Option -> what it must be (README, Evaluation); `data` is checked against the data section.
EVAL_OPTION_CHECKS = {
    **dict.fromkeys(("enabled", "at_start", "all_captions"), ("a bool", lambda v: isinstance(v, bool))),
    **dict.fromkeys(
        ("every", "images", "shots", "itm_top_k", "png_queries"), ("a whole number >= 0", lambda v: _whole(v, 0))
    ),
    **dict.fromkeys(
        ("batch_size", "max_tokens", "beams", "limit", "candidates"), ("a whole number >= 1", lambda v: _whole(v, 1))
    ),
    **dict.fromkeys(("kind", "split", "mode", "task"), ("a string", lambda v: isinstance(v, str))),
    "templates": ("a list of strings or a file of them", lambda v: v is None or isinstance(v, str) or _strings(v)),
    "classes": ("a list of class names", lambda v: v is None or _strings(v)),
    "iou": ("a number in (0, 1]", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1),
}


def _whole(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _strings(value) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _validate_evals(config: ml_collections.ConfigDict) -> None:
    """Each named evaluator: a known kind, its options of the right type (missing ones take
    their defaults), a model family it can score. Whether its dataset holds what it scores is
    checked when a run opens it (evaluate/preflight.py)."""
    if "eval" in config or "eval_every" in config.train:
        raise ConfigError(
            "config.eval and train.eval_every are replaced by named evaluators: config.evals (README, Evaluation)"
        )
    evals = config.get("evals")
    if evals is None:
        return
    if not isinstance(evals, ml_collections.ConfigDict):
        raise ConfigError(f"evals must be a dict of named evaluators, got {evals!r}")
    for name in list(evals.keys()):
        spec = evals[name]
        if not isinstance(spec, ml_collections.ConfigDict) or spec.get("kind") not in taxonomy.EVAL_KINDS:
            raise ConfigError(f"evals.{name} must name a kind among {tuple(taxonomy.EVAL_KINDS)}")
        if "/" in name or name in RESERVED_EVAL_NAMES:
            raise ConfigError(
                f"evals.{name}: an evaluator's name must hold no '/' and not be one of {RESERVED_EVAL_NAMES}"
            )
        _fill_eval_options(config, name, spec)
        if spec.enabled:
            _check_eval_family(config, name, spec)


def _fill_eval_options(config: ml_collections.ConfigDict, name: str, spec: ml_collections.ConfigDict) -> None:
    defaults = {**taxonomy.EVAL_OPTIONS, **taxonomy.EVAL_KINDS[spec.kind].options}
    unknown = sorted(set(spec.keys()) - {"kind", *defaults})
    if unknown:
        raise ConfigError(f"evals.{name} ({spec.kind}) has no option {unknown[0]!r}; it knows {sorted(defaults)}")
    with spec.unlocked():
        for key, default in defaults.items():
            if key not in spec:
                spec[key] = default
    for key in spec.keys():
        what, fits = EVAL_OPTION_CHECKS.get(key, (None, None))
        if fits is not None and not fits(spec[key]):
            raise ConfigError(f"evals.{name}.{key} must be {what}, got {spec[key]!r}")
    if spec.data is not None:
        fields = set(spec.data.keys()) if isinstance(spec.data, ml_collections.ConfigDict) else None
        if fields is None or fields - set(config.data.keys()):
            bad = spec.data if fields is None else sorted(fields - set(config.data.keys()))
            raise ConfigError(f"evals.{name}.data replaces fields of the data section; {bad!r} is not one of them")


def _check_eval_family(config: ml_collections.ConfigDict, name: str, spec: ml_collections.ConfigDict) -> None:
    family, families = config.model.family, taxonomy.EVAL_KINDS[spec.kind].families
    if spec.kind == "vqa":
        if spec.mode not in taxonomy.VQA_MODES:
            raise ConfigError(f"evals.{name}.mode must be one of {tuple(taxonomy.VQA_MODES)}, got {spec.mode!r}")
        families = taxonomy.VQA_MODES[spec.mode]
        if spec.mode == "classify" and config.data.task != "vqa":
            raise ConfigError(f"evals.{name} (vqa, mode classify) scores an answer head: it needs data.task='vqa'")
        if spec.mode in taxonomy.GENERATING_VQA_MODES and family in families:
            _require_decoder(config, f"evals.{name} (vqa, mode {spec.mode})")
    if spec.kind in taxonomy.GENERATING_EVALS and family in families:
        _require_decoder(config, f"evals.{name} ({spec.kind})")
    if spec.kind == "few_shot" and spec.task not in taxonomy.FEW_SHOT_TASKS:
        raise ConfigError(f"evals.{name}.task must be one of {taxonomy.FEW_SHOT_TASKS}, got {spec.task!r}")
    if family not in families:
        raise ConfigError(f"evals.{name} ({spec.kind}) scores the families {families}; model.family is {family!r}")
    if spec.get("itm_top_k") and family != "fusion":
        raise ConfigError(f"evals.{name}.itm_top_k re-ranks with an ITM head: fusion only (model.family={family!r})")


def _resolve_hf_towers(config: ml_collections.ConfigDict) -> None:
    """init.hf directories fix their towers' shape (kind 'hf') and pixel normalisation (README,
    Import and export)."""
    hf = config.get("init", {}).get("hf") or {}
    towers = [config.model.get(slot) for slot in ("image", "text")]
    if any(hf.values()) or any(isinstance(t, ml_collections.ConfigDict) and t.get("kind") == "hf" for t in towers):
        from vlpjax.train.hf_init import resolve_hf_towers  # reads config.json files: only when asked

        resolve_hf_towers(config)


def _validate_objectives(config: ml_collections.ConfigDict) -> None:
    family, task = config.model.get("family"), config.data.get("task", "image_text")
    try:
        taxonomy.check_choice("model.family", family, taxonomy.FAMILIES)
        taxonomy.check_choice("data.task", task, taxonomy.TASKS)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    tasks = taxonomy.FAMILIES[family].tasks
    if tasks is not None and task not in tasks:
        raise ConfigError(f"model.family={family!r} trains on data.task among {tasks}, got data.task={task!r}")
    for name in config.objectives:
        problem = taxonomy.objective_problem(name, family, task)
        if problem:
            raise ConfigError(problem)
        if name in taxonomy.GENERATING_OBJECTIVES:
            _require_decoder(config, f"objectives.{name}")
    detector = config.model.get("detector") or {}
    if "box_head" in config.objectives and not (detector.get("box_head") and detector.get("num_classes")):
        raise ConfigError("objectives.box_head trains a box head: set model.detector.box_head and num_classes")
    if config.model.family == "detector" and detector.get("box_head") and "box_head" not in config.objectives:
        raise ConfigError(
            "model.detector.box_head is set but objectives.box_head is not: the box head would stay random "
            "(a region model would read its noise); train it, or set model.detector.box_head=0"
        )


def _require_decoder(config: ml_collections.ConfigDict, what: str) -> None:
    """`what` generates text: the family's optional decoder must be switched on."""
    switch = taxonomy.FAMILIES[config.model.family].decoder_switch
    if switch and not config.model.get(switch):
        raise ConfigError(f"{what} generates text: a {config.model.family} model needs model.{switch}=True")


def _validate_train(config: ml_collections.ConfigDict) -> None:
    """Values that would crash a run late (log_every=0) or quietly do the wrong thing."""
    for field in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
        if int(config.train[field]) < 1:
            raise ConfigError(f"train.{field} must be at least 1, got {config.train[field]}")
    lr = float(config.optim.lr)
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"optim.lr must be a positive finite number, got {config.optim.lr}")


# model.<key> -> (default, choices); train.grad_accum is checked with the batch.
MODEL_SWITCHES = {
    "dtype": ("float32", taxonomy.COMPUTE_DTYPES),
    "attention": ("xla", taxonomy.ATTENTION_KERNELS),
    "remat": ("none", taxonomy.REMAT_POLICIES),
    "scan_layers": (False, (False, True)),
}


def scale_switches() -> dict:
    """The model's scale switches at their defaults, for a recipe's `model` section."""
    return {key: default for key, (default, _) in MODEL_SWITCHES.items()}


def _validate_scale_switches(config: ml_collections.ConfigDict) -> None:
    for key, (default, choices) in MODEL_SWITCHES.items():
        value = config.model.get(key, default)
        if value not in choices or type(value) is not type(default):
            raise ConfigError(f"model.{key} must be one of {choices}, got {value!r}")
    if config.model.get("attention", "xla") == "cudnn" and config.model.get("dtype", "float32") == "float32":
        raise ConfigError("model.attention='cudnn' runs in bfloat16 or float16: set model.dtype=bfloat16")
    accum = config.train.get("grad_accum", 1)
    if not isinstance(accum, int) or isinstance(accum, bool) or accum < 1:
        raise ConfigError(f"train.grad_accum must be a whole number >= 1, got {accum!r}")


def _validate_devices(config: ml_collections.ConfigDict) -> None:
    """The mesh must fit the devices and the global batch must split over its batch shards,
    checked before the data and the model are built."""
    import jax  # only here: loading and overriding a config needs no backend

    from vlpjax.parallel.mesh import MESH_AXES, resolve_axis_sizes

    batch = int(config.train.batch_size)
    if config.train.parallelism == "pmap":
        shards, what = jax.device_count(), f"{jax.device_count()} devices (pmap)"
    else:
        try:
            sizes = dict(zip(MESH_AXES, resolve_axis_sizes(dict(config.mesh), jax.device_count()), strict=True))
        except ValueError as err:
            raise ConfigError(f"config.mesh does not fit the devices: {err}") from None
        shards, what = sizes["data"] * sizes["fsdp"], f"{sizes['data'] * sizes['fsdp']} batch shards of mesh {sizes}"
    if batch % shards or batch % jax.process_count():
        raise ConfigError(
            f"train.batch_size {batch} does not split over the {what} and {jax.process_count()} process(es)"
        )
    accum = config.train.get("grad_accum", 1)
    if (batch // shards) % accum:
        raise ConfigError(
            f"train.grad_accum={accum} does not divide the {batch // shards} rows each of the {what} holds "
            f"(train.batch_size {batch})"
        )


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    return validate(apply_overrides(load_recipe(spec), overrides))
