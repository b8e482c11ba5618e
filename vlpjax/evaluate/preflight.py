"""What each evaluator will read, opened when a run starts, before its first step: a problem
(a dataset that is not built, a missing split, no class labels, a bad templates file, more
shots than training examples) stops the run then, naming the evaluator, not after training."""

from __future__ import annotations

from vlpjax.data.question_answer import MIN_PROMPT, check_template
from vlpjax.errors import InvalidInput
from vlpjax.evaluate.context import EvalContext
from vlpjax.evaluate.zero_shot import DEFAULT_TEMPLATES, load_templates
from vlpjax.models.prefix_lm import PrefixLMConfig
from vlpjax.models.text import BertConfig, TextTransformerConfig
from vlpjax.taxonomy import EVAL_KINDS


def check_evaluators(ctx: EvalContext, specs: dict) -> None:
    for name, spec in specs.items():
        try:
            _check_dataset_fits(ctx, spec)
            _check_sources(ctx, spec)
        except (InvalidInput, FileNotFoundError, ValueError) as err:
            raise InvalidInput(f"evals.{name} ({spec.kind}): {err}") from None


def _dataset_lacks(ctx: EvalContext, spec) -> str | None:
    """What the evaluator scores that its dataset does not hold, or None."""
    kind, family = ctx.dataset_kind(spec), ctx.config.model.family
    if spec.kind == "perplexity":
        if family == "flamingo":
            return None if kind.documents else "interleaved documents"
        return "texts" if (kind.documents or not kind.image_text) else None
    if EVAL_KINDS[spec.kind].needs == "labels":
        return None if kind.class_names is not None else "class labels"
    if EVAL_KINDS[spec.kind].needs == "boxes":
        return None if kind.boxes else "object boxes"
    return "captioned images or questions" if (kind.documents or not kind.image_text) else None


def _check_dataset_fits(ctx: EvalContext, spec) -> None:
    lacks, name = _dataset_lacks(ctx, spec), ctx.data_config(spec).name
    if lacks:
        raise InvalidInput(
            f"needs {lacks}, which dataset {name!r} does not hold: point its `data` at one that does, or turn "
            "it off with --config.evals.<name>.enabled=False"
        )
    if ctx.pipeline.region_grid and name != ctx.config.data.name:
        raise InvalidInput(f"region features are pooled from the boxes of the run's dataset; {name!r} has none")


def _check_sources(ctx: EvalContext, spec) -> None:
    if not len(ctx.source(spec)):
        raise InvalidInput(f"the {spec.split} split of {ctx.data_config(spec).name} is empty")
    if spec.kind == "zero_shot":
        _check_classes(ctx, spec)
        load_templates(spec.templates if spec.templates else DEFAULT_TEMPLATES)
    if ctx.config.model.family in TEXT_POSITIONS:
        if spec.kind == "captioning":
            _check_written_length(ctx, spec, "the start token", 1)
        if spec.kind == "vqa" and spec.mode == "generate":
            _check_written_length(ctx, spec, f"the shortest question prompt ({MIN_PROMPT} tokens)", MIN_PROMPT)
        if spec.kind == "vqa" and spec.mode == "rank":
            check_template(ctx.tokenizer)
    if spec.kind == "few_shot" and spec.shots > len(ctx.source(spec, "train")):
        raise InvalidInput(f"shots={spec.shots}, but the train split has {len(ctx.source(spec, 'train'))} examples")


# Where a text-writing family's text positions are set: (section, field, default).
TEXT_POSITIONS = {
    "coca": ("text", "max_len", TextTransformerConfig.max_len),
    "prefix_lm": ("prefix_lm", "max_len", PrefixLMConfig.max_len),
    "fusion": ("text", "max_position_embeddings", BertConfig.max_position_embeddings),  # BLIP's decoder
}


def _check_written_length(ctx: EvalContext, spec, opening: str, opening_tokens: int) -> None:
    """The opening tokens and `max_tokens` new ones must fit the trained positions; the
    tokenizer must have the start and end tokens the captioner uses."""
    section, field, default = TEXT_POSITIONS[ctx.config.model.family]
    positions = ctx.config.model[section].get(field, default)
    if spec.max_tokens + opening_tokens > positions:
        raise InvalidInput(f"max_tokens={spec.max_tokens} and {opening} exceed model.{section}.{field}={positions}")
    if ctx.tokenizer.cls_id is None or ctx.tokenizer.sep_id is None:
        raise InvalidInput(
            "generated text starts at the tokenizer's [CLS] (or <s>) and ends at [SEP] (or </s>); it has none"
        )


def _check_classes(ctx: EvalContext, spec) -> None:
    """A `classes` list must name the dataset's classes in its label order: one name each."""
    dataset_classes = ctx.dataset_kind(spec).class_names(ctx.builder(spec))
    if spec.classes and len(spec.classes) != len(dataset_classes):
        raise InvalidInput(
            f"classes lists {len(spec.classes)} names, but the dataset's labels index {len(dataset_classes)} classes "
            f"({', '.join(dataset_classes[:3])}, ...): give one name per class, in that order"
        )
