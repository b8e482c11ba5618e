"""What a recipe can name: model families, data tasks, the objectives each can train, and the
evaluators that can score them.

The one place these names are listed. Config validation, the model builders, the input
pipeline, the objective registry and the evaluation read them from here; each registry of
implementations (model builders in train/build.py, objective terms in objectives/registry.py,
evaluators in evaluate/evaluators.py) is checked against these tables by tests.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Family:
    objectives: tuple[str, ...]  # the objectives its outputs feed
    tasks: tuple[str, ...] | None = None  # the data tasks that produce its inputs; None: any task
    # The model field that gives the family a text decoder where it is optional (fusion:
    # BLIP's decoder); what generates text (the `lm` objective, captioning, generated VQA)
    # needs it set. None: the family always has its decoder, or never.
    decoder_switch: str | None = None


@dataclasses.dataclass(frozen=True)
class Task:
    objectives: tuple[str, ...]  # the objectives its batches feed


FAMILIES: dict[str, Family] = {
    "dual_encoder": Family(objectives=("itc",)),
    "fusion": Family(objectives=("itc", "itm", "mlm", "vqa", "lm"), decoder_switch="decoder"),
    "decoder_lm": Family(objectives=("lm",), tasks=("text",)),
    "flamingo": Family(objectives=("lm",), tasks=("interleaved",)),
    "coca": Family(objectives=("itc", "lm"), tasks=("image_text", "question_answer")),  # lm: the captioning loss
    "prefix_lm": Family(objectives=("prefix_lm",), tasks=("image_text", "question_answer")),
    # Faster R-CNN: region proposals, and the box head's object classes
    "detector": Family(objectives=("rpn", "box_head"), tasks=("detection",)),
}

TASKS: dict[str, Task] = {
    "image_text": Task(objectives=("itc", "itm", "mlm", "lm", "prefix_lm")),
    "vqa": Task(objectives=("vqa",)),  # answer classification
    # Generated VQA: "[CLS] question [SEP] answer [SEP]" rows whose answer is predicted.
    "question_answer": Task(objectives=("lm", "prefix_lm")),
    "text": Task(objectives=("lm",)),
    "interleaved": Task(objectives=("lm",)),
    "detection": Task(objectives=("rpn", "box_head")),  # images with their objects' boxes
}
# What generates text, and so needs a family's decoder_switch set: objectives, evaluator kinds.
GENERATING_OBJECTIVES = ("lm",)
GENERATING_EVALS = ("captioning",)


@dataclasses.dataclass(frozen=True)
class EvalKind:
    """An evaluator a recipe can name in `config.evals` (README, Evaluation)."""

    families: tuple[str, ...]  # the model families it can score
    needs: str  # what its data rows must hold: captions | labels | questions | text
    options: dict  # its own options and their defaults, beside EVAL_OPTIONS


# Options every evaluator has. `data`: fields that replace the run's `data` section for this
# evaluator (None: the run's dataset); `every`: steps between runs, 0 only at the end.
EVAL_OPTIONS = dict(enabled=True, every=0, at_start=False, batch_size=250, data=None, split="test")

EVAL_KINDS: dict[str, EvalKind] = {
    "retrieval": EvalKind(
        families=("dual_encoder", "fusion", "coca"),
        needs="captions",
        options=dict(all_captions=False, itm_top_k=0, png_queries=0),
    ),
    "zero_shot": EvalKind(
        families=("dual_encoder", "fusion", "coca"), needs="labels", options=dict(classes=None, templates=None)
    ),
    "vqa": EvalKind(
        families=("fusion", "flamingo", "coca", "prefix_lm"),
        needs="questions",
        options=dict(mode="classify", images=0, max_tokens=3, beams=1, candidates=128),
    ),
    "captioning": EvalKind(
        families=("flamingo", "coca", "prefix_lm", "fusion"),
        needs="captions",
        options=dict(images=0, max_tokens=32, beams=1),
    ),
    "few_shot": EvalKind(
        families=("flamingo",),
        needs="captions or questions",
        options=dict(task="captioning", shots=2, images=0, max_tokens=32, beams=1),
    ),
    "perplexity": EvalKind(families=("decoder_lm", "flamingo"), needs="text", options=dict(limit=1000)),
    # Recall of the ground-truth boxes by each image's top_k proposals (IoU >= iou), and the mean
    # IoU of each recalled box's best proposal; with a box head, how often it names a box's class.
    "proposals": EvalKind(families=("detector",), needs="boxes", options=dict(images=0, iou=0.5)),
}
# mode -> the families it scores: the answer head's class; an answer generated after the
# question; the training answers ranked by likelihood (BLIP: the `candidates` likeliest first tokens).
VQA_MODES = {
    "classify": ("fusion",),
    "generate": ("flamingo", "fusion", "coca", "prefix_lm"),
    "rank": ("fusion", "coca", "prefix_lm"),
}
GENERATING_VQA_MODES = ("generate", "rank")
FEW_SHOT_TASKS = ("captioning", "vqa")

# The scale switches every recipe has (README, "Scale switches"): what each can be set to.
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_KERNELS = ("xla", "cudnn")
REMAT_POLICIES = ("none", "block", "dots_saveable", "nothing_saveable")
# Objectives whose loss reads only the model's per-row outputs (embeddings) and shared scalars:
# gradient accumulation can cache those outputs and be exact (GradCache).
EMBEDDING_OBJECTIVES = ("itc",)

OBJECTIVE_NAMES: tuple[str, ...] = tuple(dict.fromkeys(o for f in FAMILIES.values() for o in f.objectives))


def check_choice(kind: str, value: str, table) -> None:
    """Raise ValueError naming `kind` and the choices when `value` is not a key of `table`."""
    if value not in table:
        raise ValueError(f"{kind} must be one of {tuple(table)}, got {value!r}")


def objective_problem(name: str, family: str, task: str) -> str | None:
    """Why objective `name` cannot train `family` on `task`, or None when it can."""
    if name not in FAMILIES[family].objectives:
        families = [f for f, spec in FAMILIES.items() if name in spec.objectives]
        return f"objectives.{name} needs a model family among {families}; model.family is {family!r}"
    if name not in TASKS[task].objectives:
        return f"objectives.{name} does not apply to data.task={task!r}; that task trains {TASKS[task].objectives}"
    return None
