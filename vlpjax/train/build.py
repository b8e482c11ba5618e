"""From a validated config to the things a run needs: data, tokenizer, model and train state."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vlpjax.config import scale_switches
from vlpjax.data import builders
from vlpjax.data.pipeline import QUESTION_TASKS, PipelineConfig, training_answers
from vlpjax.data.tokenizer import TOKENIZER_FILE, TextTokenizer
from vlpjax.errors import InvalidInput
from vlpjax.interop.hf_lm import decoder_config_from_hf, load_decoder_lm
from vlpjax.interop.safetensors_io import read_config
from vlpjax.models.coca import build_coca
from vlpjax.models.detection.detector import build_detector
from vlpjax.models.flamingo import Flamingo, FlamingoConfig
from vlpjax.models.fusion_vlp import build_fusion_vlp
from vlpjax.models.lm import DecoderLM, DecoderLMConfig, LanguageModel
from vlpjax.models.prefix_lm import build_prefix_lm
from vlpjax.models.vlp import build_dual_encoder, build_image_encoder, build_text_encoder
from vlpjax.objectives.registry import TextVocab
from vlpjax.parallel import make_mesh, state_shardings
from vlpjax.taxonomy import check_choice
from vlpjax.train import checkpoints
from vlpjax.train import rules as rule_lib
from vlpjax.train.hf_init import check_hf_towers, load_hf_towers
from vlpjax.train.optimizer import make_optimizer
from vlpjax.train.state import TrainState, split_model

ANSWERS_FILE = "answers.json"


@dataclasses.dataclass
class Data:
    train_source: Any
    test_source: Any
    tokenizer: TextTokenizer
    # The training answers (empty unless the task has questions): data.task='vqa' classifies
    # into them; 'question_answer' ranks them (the vqa evaluator's rank mode).
    answers: list[str]
    answer_head: bool = False  # whether the model has a VQA answer head of len(answers) outputs

    @property
    def num_answers(self) -> int:
        return len(self.answers) if self.answer_head else 0

    @property
    def vocab(self) -> TextVocab:
        t = self.tokenizer
        return TextVocab(vocab_size=t.vocab_size, mask_id=t.mask_id, special_ids=t.special_ids)


def load_data(config: ml_collections.ConfigDict, saved_answers: str | None = None) -> Data:
    """The dataset, its tokenizer and (VQA) the answer vocabulary.

    `saved_answers`: a run's answers.json. Where it exists it is the vocabulary, since a
    checkpoint's answer head is indexed by it; otherwise the training split is scanned for it.
    """
    if not builders.dataset_kind(config.data.name).image_text:
        raise InvalidInput(
            f"data.name={config.data.name!r} holds labelled images for zero-shot evaluation, not image-text "
            "pairs to train on (README, Published datasets)"
        )
    if config.data.task == "detection" and not builders.dataset_kind(config.data.name).boxes:
        raise InvalidInput(f"data.task='detection' trains on boxes; dataset {config.data.name!r} has none")
    builder = builders.load_dataset(config.data)
    tokenizer_path = config.data.tokenizer or os.path.join(builders.dataset_dir(builder), TOKENIZER_FILE)
    if config.model.family == "flamingo" and not config.data.tokenizer:
        tokenizer_path = lm_directory(config.model.lm)  # the LM's own tokenizer
    sources = builder.as_data_source()
    missing = [split for split in ("train", "test") if split not in sources]
    if missing:
        raise InvalidInput(
            f"dataset {builder.builder_config.name} has the splits {sorted(sources)}, not {missing}: a run trains "
            "on train and evaluates on test. Rows that name a split need both among them (rows that name none "
            "are split at random)"
        )
    questions = config.data.task in QUESTION_TASKS
    answers = vqa_answers(sources["train"], config.data.max_answers or None, saved_answers) if questions else []
    if questions and not answers:
        raise InvalidInput(f"data.task={config.data.task!r} but dataset {config.data.name} has no answered questions")
    tokenizer = TextTokenizer(tokenizer_path)
    return Data(sources["train"], sources["test"], tokenizer, answers, answer_head=config.data.task == "vqa")


def vqa_answers(train_source, max_answers: int | None, saved_answers: str | None) -> list[str]:
    if saved_answers and os.path.exists(saved_answers):
        with open(saved_answers) as f:
            answers = json.load(f)
        if not (isinstance(answers, list) and all(isinstance(a, str) for a in answers)):
            raise InvalidInput(f"{saved_answers} must hold a JSON list of answer strings")
        return answers
    return training_answers(train_source, max_answers)


def answers_path(workdir: str) -> str:
    return os.path.join(workdir, ANSWERS_FILE)


def save_answers(workdir: str, answers: list[str]) -> None:
    """The answer vocabulary (index = VQA head output; generated VQA's rank candidates): what a
    user of the checkpoint needs."""
    if answers and jax.process_index() == 0:
        with open(answers_path(workdir), "w") as f:
            json.dump(answers, f, indent=0)


def pipeline_config(config: ml_collections.ConfigDict, process_count: int) -> PipelineConfig:
    if config.train.batch_size % process_count:
        raise InvalidInput(f"train.batch_size {config.train.batch_size} does not split over {process_count} processes")
    return PipelineConfig(
        batch_size=config.train.batch_size // process_count,
        image_size=config.data.image_size,
        text_len=config.data.text_len,
        seed=config.seed,
        crop_scale=tuple(config.data.crop_scale),
        flip=config.data.flip,
        flip_swaps_words=builders.dataset_kind(config.data.name).flip_swaps_words,
        task=config.data.task,
        chunks=config.data.get("chunks", 2),
        lm_vocab_size=lm_vocab_size(config.model),
        documents=builders.dataset_kind(config.data.name).documents,
        region_grid=config.data.region_grid,
        max_regions=config.data.max_regions,
        box_classes=(config.model.get("detector") or {}).get("num_classes", 0)
        if "box_head" in config.objectives
        else 0,
    )


def lm_directory(lm_spec) -> str:
    """Flamingo's LM: a local Hugging Face directory (config.json + safetensors)."""
    path = lm_spec.get("path", "")
    if not path or not os.path.isdir(path):
        raise FileNotFoundError(
            f"model.lm.path={path!r} is not a directory: point it at a Hugging Face decoder LM (see README, Flamingo)"
        )
    return path


def lm_vocab_size(model_config: ml_collections.ConfigDict) -> int:
    """Flamingo's new tokens take the ids after the LM's vocabulary; 0 for other families."""
    if model_config.family != "flamingo":
        return 0
    path = lm_directory(model_config.lm)
    return decoder_config_from_hf(read_config(path), os.path.join(path, "config.json")).vocab_size


def build_flamingo(spec: dict, switches: dict, seed: int) -> Flamingo:
    lm = load_decoder_lm(lm_directory(spec["lm"]), **switches)
    vision = build_image_encoder({**spec["image"], **switches}, rngs=nnx.Rngs(seed))
    return Flamingo(vision, lm, FlamingoConfig(**spec.get("flamingo", {})), rngs=nnx.Rngs(seed + 1))


def _build_decoder_lm(spec: dict, switches: dict, seed: int, vocab_size: int, num_answers: int) -> nnx.Module:
    return LanguageModel(
        DecoderLM(DecoderLMConfig(**spec["lm"], vocab_size=vocab_size, **switches), rngs=nnx.Rngs(seed))
    )


def _build_flamingo(spec: dict, switches: dict, seed: int, vocab_size: int, num_answers: int) -> nnx.Module:
    return build_flamingo(spec, switches, seed)


def _towers(spec: dict, switches: dict, vocab_size: int) -> dict:
    return {
        **spec,
        "image": {**spec["image"], **switches},
        "text": {**spec["text"], "vocab_size": vocab_size, **switches},
    }


def _build_dual_encoder(spec: dict, switches: dict, seed: int, vocab_size: int, num_answers: int) -> nnx.Module:
    if num_answers:
        raise InvalidInput("VQA (data.task='vqa') needs a fusion model (model.family='fusion')")
    return build_dual_encoder(_towers(spec, switches, vocab_size), rngs=nnx.Rngs(seed))


def _build_fusion(spec: dict, switches: dict, seed: int, vocab_size: int, num_answers: int) -> nnx.Module:
    spec = _towers(spec, switches, vocab_size)
    if spec.get("fusion", {}).get("layout", "albef") != "albef":
        spec["fusion"] = {**spec["fusion"], **switches}
    return build_fusion_vlp({**spec, "num_answers": num_answers}, rngs=nnx.Rngs(seed))


def _build_coca(spec: dict, switches: dict, seed: int, vocab_size: int, num_answers: int) -> nnx.Module:
    if num_answers:
        raise InvalidInput("VQA (data.task='vqa') needs a fusion model (model.family='fusion')")
    spec = _towers(spec, switches, vocab_size)
    rngs = nnx.Rngs(seed)
    image, text = build_image_encoder(spec["image"], rngs=rngs), build_text_encoder(spec["text"], rngs=rngs)
    return build_coca(spec, image_encoder=image, text_encoder=text, vocab_size=vocab_size, rngs=rngs)


def _build_prefix_lm(spec: dict, switches: dict, seed: int, vocab_size: int, num_answers: int) -> nnx.Module:
    if num_answers:
        raise InvalidInput("VQA (data.task='vqa') needs a fusion model (model.family='fusion')")
    rngs = nnx.Rngs(seed)
    image = build_image_encoder({**spec["image"], **switches}, rngs=rngs)
    spec = {**spec, "prefix_lm": {**spec["prefix_lm"], **switches}}
    return build_prefix_lm(spec, image_encoder=image, vocab_size=vocab_size, rngs=rngs)


def _build_detector(spec: dict, switches: dict, seed: int, vocab_size: int, num_answers: int) -> nnx.Module:
    # Convolutions only: of the scale switches only the compute dtype applies (to the backbone).
    spec = {**spec, "backbone": {**spec.get("backbone", {}), "dtype": switches["dtype"]}}
    return build_detector(spec, rngs=nnx.Rngs(seed))


# One builder per model family of vlpjax.taxonomy.FAMILIES (tests/test_taxonomy.py checks the keys).
FAMILY_BUILDERS = {
    "dual_encoder": _build_dual_encoder,
    "fusion": _build_fusion,
    "decoder_lm": _build_decoder_lm,
    "flamingo": _build_flamingo,
    "coca": _build_coca,
    "prefix_lm": _build_prefix_lm,
    "detector": _build_detector,
}


def build_model(
    model_config: ml_collections.ConfigDict, vocab_size: int, seed: int, num_answers: int = 0
) -> nnx.Module:
    spec = model_config.to_dict()
    family = spec.pop("family")
    check_choice("model.family", family, FAMILY_BUILDERS)
    # The scale switches reach every tower and stack of the family (README, "Scale switches").
    switches = {key: spec.pop(key, default) for key, default in scale_switches().items()}
    return FAMILY_BUILDERS[family](spec, switches, seed, vocab_size, num_answers)


def _checkpoint_name(key: str, rename) -> str:
    """Our parameter path `key` as the checkpoint names it: the first (ours, theirs) prefix
    pair of init.rename that fits replaces its prefix."""
    for ours, theirs in rename:
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    return key


def _missing_hint(name: str) -> str:
    if name.startswith("box_head/"):  # a detector run from before the box head, or trained without one
        return (
            "; the detector run has no box head: retrain it (configs/detector_shapes.py), or read its "
            "RoIAlign bins with --config.model.image.detector.box_head=0"
        )
    return ""


def load_pretrained(params, frozen, init: ml_collections.ConfigDict):
    """Copy parameters matching `init.load` patterns from the checkpoint of another run (LiT)."""
    if not init.checkpoint:
        return params, frozen
    saved, step = checkpoints.restore_params(init.checkpoint)
    source = {}
    for part in ("params", "frozen"):
        for path, value in jax.tree_util.tree_leaves_with_path(saved[part]):
            source[rule_lib.path_string(path)] = value

    def take(path, current):
        key = rule_lib.path_string(path)
        if not rule_lib.matches(key, init.load):
            return current
        theirs = _checkpoint_name(key, init.get("rename", ()))
        if theirs not in source:
            named = theirs if theirs == key else f"{theirs!r} (the model's {key!r} through init.rename)"
            raise InvalidInput(
                f"init.checkpoint {init.checkpoint!r} (step {step}) has no parameter {named}{_missing_hint(theirs)}"
            )
        if tuple(source[theirs].shape) != tuple(current.shape):
            raise InvalidInput(
                f"init.checkpoint parameter {theirs!r} has shape {tuple(source[theirs].shape)}, "
                f"the model's {key!r} expects {tuple(current.shape)}"
            )
        return jnp.asarray(source[theirs], current.dtype)

    loaded = [k for k in rule_lib.leaf_paths(params) + rule_lib.leaf_paths(frozen) if rule_lib.matches(k, init.load)]
    if not loaded:
        raise InvalidInput(f"init.load patterns {tuple(init.load)} match no parameter of the model")
    return jax.tree_util.tree_map_with_path(take, params), jax.tree_util.tree_map_with_path(take, frozen)


@dataclasses.dataclass
class Run:
    graphdef: Any
    state: TrainState
    tx: Any
    mesh: Any
    shardings: Any


def init_sharded(config: ml_collections.ConfigDict, vocab_size: int, num_answers: int, mesh):
    """(graphdef, params, frozen) created already sharded: the model is built once abstractly
    (shapes and logical axes only), then built again inside jit with out_shardings from the rule
    table, so no device ever holds a whole FSDP-sharded kernel. The values are those of an
    eager build: the random bits do not depend on how the result is sharded."""
    frozen_rules = tuple(config.rules.frozen)

    def build():
        return split_model(build_model(config.model, vocab_size, config.seed, num_answers), frozen_rules)

    try:  # the first build: a field the model's config classes reject is the user's to fix
        abstract = nnx.eval_shape(lambda: build_model(config.model, vocab_size, config.seed, num_answers))
    except (ValueError, TypeError) as err:
        raise InvalidInput(f"the model config is invalid: {err}") from err
    graphdef, abstract_params, abstract_frozen = split_model(abstract, frozen_rules)
    shardings = (state_shardings(abstract_params, mesh), state_shardings(abstract_frozen, mesh))
    params, frozen = jax.jit(lambda: build()[1:], out_shardings=shardings)()
    return graphdef, params, frozen, shardings


def create_run(
    config: ml_collections.ConfigDict,
    vocab_size: int,
    num_answers: int = 0,
    *,
    sep_id: int | None = None,
    load_init: bool = True,
) -> Run:
    """The run's model, optimizer and state. `load_init`: load init.checkpoint and init.hf (a
    restored run skips them: its checkpoint holds every weight). `sep_id`: the tokenizer's [SEP],
    where a causal text tower pools (init.hf compares it with a checkpoint's EOS)."""
    hf_sources = check_hf_towers(config, vocab_size, sep_id) if load_init else []  # before anything is built
    mesh = make_mesh(**config.mesh)
    graphdef, params, frozen, (param_spec, frozen_spec) = init_sharded(config, vocab_size, num_answers, mesh)
    if load_init:
        params, frozen = load_pretrained(params, frozen, config.init)
        params, frozen = load_hf_towers(params, frozen, hf_sources)
    tx = make_optimizer(config.optim, config.rules, params, config.train.steps)
    replicated = NamedSharding(mesh, P())
    params = jax.device_put(params, param_spec)  # loaded (init.checkpoint, init.hf) leaves come in whole
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    frozen = jax.device_put(frozen, frozen_spec)
    # Adam moments live where their parameters live; counters are replicated. Explicit
    # shardings keep the step's input and output layouts identical (no second compile).
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, jax.eval_shape(tx.init, params), param_shardings, transform_non_params=lambda _: replicated
    )
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    state = TrainState(step=jax.device_put(jnp.int32(0), replicated), params=params, frozen=frozen, opt_state=opt_state)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    return Run(graphdef, state, tx, mesh, shardings)
