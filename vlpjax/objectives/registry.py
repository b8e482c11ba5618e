"""The objective set a config names, combined into one weighted loss.

A term is `term(outputs, batch, ctx, **options) -> (loss, metrics)`. `outputs` is what the
model's forward pass returned (global view on the mesh, one shard under pmap); `ctx` gives the
model (for terms that run its fusion encoder), this step's key, and `ctx.shards`, which runs a
pure per-shard function with an axis name. The heavy lifting stays in pure functions of local
shards (contrastive.py, matching.py, masking.py, vqa.py), each tested against one device.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from vlpjax.objectives.causal_lm import causal_lm_loss, prefix_lm_loss, random_prefix_lengths
from vlpjax.objectives.contrastive import sigmoid_loss, softmax_loss
from vlpjax.objectives.masking import mask_tokens, mlm_loss
from vlpjax.objectives.matching import itm_loss, mine_hard_negatives
from vlpjax.objectives.proposals import box_head_loss, rpn_loss
from vlpjax.objectives.vqa import vqa_loss

# Independent random streams drawn from the step key.
_ITM_STREAM, _MLM_STREAM, _PREFIX_STREAM, _RPN_STREAM = 1, 2, 3, 4


@dataclasses.dataclass(frozen=True)
class StepContext:
    model: Any
    key: jax.Array
    shards: Callable  # parallel.MeshShards or parallel.AxisShards


@dataclasses.dataclass(frozen=True)
class TextVocab:
    """What MLM needs to know of the tokenizer."""

    vocab_size: int
    mask_id: int | None
    special_ids: tuple[int, ...]


def itc(outputs, batch, ctx: StepContext, *, chunked: bool = False):
    """Image-text contrastive: sigmoid when the model has a logit bias (SigLIP), else softmax."""
    rows = (outputs["img_emb"], outputs["txt_emb"])
    if "logit_bias" in outputs:
        loss = functools.partial(sigmoid_loss, chunked=chunked)
        return ctx.shards(loss, rows=rows, shared=(outputs["logit_scale"], outputs["logit_bias"]))
    if chunked:
        raise ValueError("objectives.itc.chunked applies to the sigmoid loss only (model.contrastive='sigmoid')")
    return ctx.shards(softmax_loss, rows=rows, shared=(outputs["logit_scale"],))


def itm(outputs, batch, ctx: StepContext):
    """Image-text matching on (positive, hard-negative image, hard-negative text) triples."""
    image, text = outputs["image"], outputs["text"]
    key = jax.random.fold_in(ctx.key, _ITM_STREAM)
    # The fusion reads tokens and masks only: leaving `pooled` out saves its all-gather.
    fusion_inputs = (image._replace(pooled=None), text._replace(pooled=None))
    neg_image, neg_text = ctx.shards(
        mine_hard_negatives,
        rows=(outputs["img_emb"], outputs["txt_emb"], batch["image_id"], *fusion_inputs),
        shared=(outputs["logit_scale"], key),
        per_row=True,
    )
    model = ctx.model
    logits = (model.itm_logits(text, image), model.itm_logits(text, neg_image), model.itm_logits(neg_text, image))
    return ctx.shards(itm_loss, rows=logits)


def mlm(outputs, batch, ctx: StepContext, *, vocab: TextVocab, prob: float = 0.15):
    """Masked language modelling of the text, conditioned on its image through the fusion."""
    if vocab.mask_id is None:
        raise ValueError("objectives.mlm needs a tokenizer with a [MASK] token")
    key = jax.random.fold_in(ctx.key, _MLM_STREAM)
    masking = functools.partial(
        mask_tokens, mask_id=vocab.mask_id, special_ids=vocab.special_ids, vocab_size=vocab.vocab_size, prob=prob
    )
    masked_ids, targets, selected = ctx.shards(
        lambda ids, mask, k, axis_name: masking(k, ids, mask, axis_name=axis_name),
        rows=(batch["text_ids"], batch["text_mask"]),
        shared=(key,),
        per_row=True,
    )
    model = ctx.model
    logits = model.mlm_logits(model.encode_text(masked_ids, batch["text_mask"]), outputs["image"])
    return ctx.shards(mlm_loss, rows=(logits, targets, selected))


def vqa(outputs, batch, ctx: StepContext):
    """Answer classification against soft VQA targets."""
    return ctx.shards(vqa_loss, rows=(outputs["answer_logits"], batch["answer_scores"]))


def lm(outputs, batch, ctx: StepContext):
    """Next-token prediction of the text (Flamingo: conditioned on the images before it); on
    question_answer rows (`prefix_len`), of the answer after its question."""
    loss = functools.partial(causal_lm_loss, ignore_ids=getattr(ctx.model, "ignored_targets", ()))
    rows = (outputs["logits"], batch["text_ids"], batch["text_mask"])
    return ctx.shards(loss, rows=rows + ((batch["prefix_len"],) if "prefix_len" in batch else ()))


def prefix_lm(outputs, batch, ctx: StepContext):
    """SimVLM: each row's prefix length drawn at random (question_answer rows: the question),
    the suffix's next tokens scored."""
    if "prefix_len" in batch:
        prefix = batch["prefix_len"]
    else:
        prefix = random_prefix_lengths(jax.random.fold_in(ctx.key, _PREFIX_STREAM), batch["text_mask"])
    logits = ctx.model.text_logits(batch, prefix)
    return ctx.shards(prefix_lm_loss, rows=(logits, batch["text_ids"], batch["text_mask"], prefix))


def rpn(outputs, batch, ctx: StepContext, *, per_image: int = 256, positive_fraction: float = 0.5):
    """Region proposals: objectness and box deltas of sampled anchors against the boxes."""
    model = ctx.model
    loss = functools.partial(
        rpn_loss,
        anchors=jnp.asarray(model.anchors),
        image_size=model.config.image_size,
        per_image=per_image,
        positive_fraction=positive_fraction,
    )
    rows = (outputs["objectness"], outputs["deltas"], batch["gt_boxes"], batch["gt_mask"])
    return ctx.shards(loss, rows=rows, shared=(jax.random.fold_in(ctx.key, _RPN_STREAM),))


def box_head(outputs, batch, ctx: StepContext):
    """Faster R-CNN's second stage: the object class (or background) of each region."""
    if "roi_logits" not in outputs:
        raise ValueError("objective box_head needs a detector with model.detector.box_head > 0 and num_classes")
    loss = functools.partial(box_head_loss, image_size=ctx.model.config.image_size)
    keys = ("roi_logits", "roi_boxes", "roi_valid")
    rows = tuple(outputs[k] for k in keys) + (batch["gt_boxes"], batch["gt_mask"], batch["gt_labels"])
    return ctx.shards(loss, rows=rows)


OBJECTIVES: dict[str, Callable] = {
    "itc": itc,
    "itm": itm,
    "mlm": mlm,
    "vqa": vqa,
    "lm": lm,
    "prefix_lm": prefix_lm,
    "rpn": rpn,
    "box_head": box_head,
}
NEEDS_VOCAB = ("mlm",)


def make_objective(spec: Mapping[str, Mapping], vocab: TextVocab | None = None) -> Callable:
    """{'itc': {'weight': 1.0, ...options}, ...} -> objective(outputs, batch, ctx)."""
    parts = []
    for name, options in spec.items():
        if name not in OBJECTIVES:
            raise ValueError(f"unknown objective {name!r}; available: {sorted(OBJECTIVES)}")
        options = dict(options)
        weight = float(options.pop("weight", 1.0))
        if name in NEEDS_VOCAB:
            if vocab is None:
                raise ValueError(f"objective {name!r} needs the tokenizer's vocabulary")
            options["vocab"] = vocab
        parts.append((name, weight, OBJECTIVES[name], options))

    def objective(outputs, batch, ctx: StepContext):
        total, metrics = 0.0, {}
        for name, weight, fn, options in parts:
            loss, m = fn(outputs, batch, ctx, **options)
            total = total + weight * loss
            metrics.update(m)
            metrics[f"{name}/loss"] = loss
        metrics["loss"] = total
        return total, metrics

    return objective
