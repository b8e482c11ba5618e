"""The evaluators a recipe names in `config.evals`, one function per kind (the kinds and their
options are listed in vlpjax.taxonomy.EVAL_KINDS; README, Evaluation).

Each takes the run's `EvalContext`, its name and its options, and returns metrics named
`<family>/<metric>` by the scoring code ("retrieval/t2i_r1", "vqa/accuracy"); `run_evaluator`
replaces the family with the evaluator's name, so two evaluators of one kind never collide.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import numpy as np
from tqdm import tqdm

from vlpjax.data.answers import answer_score
from vlpjax.data.fields import question_rows
from vlpjax.data.interleaved import DocumentTransform
from vlpjax.data.pipeline import box_labels_of, boxes_of, image_arrays, training_answers
from vlpjax.data.tokenizer import as_text
from vlpjax.errors import InvalidInput
from vlpjax.evaluate.captioner import Captioner
from vlpjax.evaluate.captions import caption_metrics
from vlpjax.evaluate.context import EvalContext
from vlpjax.evaluate.decoded_vqa import AnswerRanker, generated_answers
from vlpjax.evaluate.generation import caption_eval, shot_examples, vqa_eval
from vlpjax.evaluate.perplexity import evaluate_documents, evaluate_lm
from vlpjax.evaluate.proposals import ProposalScorer, box_accuracy, proposal_metrics
from vlpjax.evaluate.report import top_k_png
from vlpjax.evaluate.retrieval import reranked_retrieval_metrics, retrieval_metrics
from vlpjax.evaluate.vqa import accuracy_metrics, answer_credits
from vlpjax.evaluate.zero_shot import (
    DEFAULT_TEMPLATES,
    class_embeddings,
    load_templates,
    zero_shot_accuracy,
    zero_shot_metrics,
)

logger = logging.getLogger(__name__)


def png_path(workdir: str, name: str) -> str:
    return os.path.join(workdir, f"{name}_top5.png")


# --- retrieval ---------------------------------------------------------------------------------


def _captions_and_owners(captions: list[list[str]], keep: np.ndarray, all_captions: bool):
    """The texts to rank (each kept image's first caption, or all of them) and the kept image
    each describes."""
    texts, owner = [], []
    for row, index in enumerate(keep):
        chosen = captions[index] if all_captions else captions[index][:1]
        texts += chosen
        owner += [row] * len(chosen)
    return texts, np.asarray(owner, np.int64)


class _SourceImages:
    """The model inputs of a few of a split's images, decoded when the PNG asks for them."""

    def __init__(self, source, rows: np.ndarray, ctx: EvalContext):
        self.source, self.rows, self.ctx = source, rows, ctx

    def __getitem__(self, index: int) -> np.ndarray:
        return image_arrays([self.source[int(self.rows[index])]], self.ctx.pipeline)["image"][0]


def retrieval(ctx: EvalContext, name: str, spec) -> dict[str, float]:
    """R@1/5/10 both ways over the split's captioned images (all captions of each with
    `all_captions`), and re-ranked by the ITM head with `itm_top_k`."""
    split = ctx.split_images(spec, with_tokens=spec.itm_top_k > 0)
    keep = np.flatnonzero([bool(c) for c in split.captions])
    if not len(keep):
        raise InvalidInput(f"evals.{name}: the {spec.split} split has no captioned images to retrieve")
    texts, owner = _captions_and_owners(split.captions, keep, spec.all_captions)
    inference = ctx.inference(spec.batch_size)
    ids, mask = ctx.tokenizer(texts, ctx.pipeline.text_len)
    img, txt = split.embeddings[keep], inference.texts(ids, mask)
    metrics = retrieval_metrics(img, txt, caption_image=owner)
    if spec.itm_top_k:
        # Each tower runs once per image and text; only the fusion runs per candidate pair.
        image_tokens = {k: v[keep] for k, v in split.tokens.items()}
        text_tokens = inference.text_tokens(ids, mask)

        def score(t, i):
            return inference.match_logits(image_tokens, i, text_tokens, t)

        metrics.update(reranked_retrieval_metrics(img, txt, score, spec.itm_top_k, caption_image=owner))
    if ctx.write_pngs and spec.png_queries:
        queries = np.arange(min(spec.png_queries, len(texts)))
        images = _SourceImages(ctx.source(spec), keep, ctx)
        similarity = txt[queries] @ img.T
        top_k_png(png_path(ctx.workdir, name), [texts[q] for q in queries], similarity, images, owner[queries])
    return metrics


# --- zero-shot classification ------------------------------------------------------------------


def zero_shot(ctx: EvalContext, name: str, spec) -> dict[str, float]:
    """Top-1, top-5 and mean per-class accuracy of the split's labels against class embeddings
    from prompt templates (CLIP's mean of normalised template embeddings); where rows list
    all their objects (shapes), also top-1 on the images with one object."""
    split = ctx.split_images(spec)
    classes = ctx.class_names(spec)
    if split.labels is None:
        raise InvalidInput(f"evals.{name}: the {spec.split} split's rows have no class label")
    if split.labels.max(initial=0) >= len(classes) or split.labels.min(initial=0) < 0:
        raise InvalidInput(f"evals.{name}: labels run to {split.labels.max()}, but there are {len(classes)} classes")
    templates = load_templates(spec.templates if spec.templates else DEFAULT_TEMPLATES)
    inference = ctx.inference(spec.batch_size)
    class_emb = class_embeddings(
        lambda texts: inference.texts(*ctx.tokenizer(texts, ctx.pipeline.text_len)), classes, templates
    )
    metrics = zero_shot_metrics(split.embeddings, class_emb, split.labels)
    if split.object_counts is not None and (split.object_counts == 1).any():
        single = split.object_counts == 1
        metrics["zero_shot/single_object_top1"] = zero_shot_accuracy(
            split.embeddings[single], class_emb, split.labels[single]
        )
    return metrics


# --- VQA ---------------------------------------------------------------------------------------


def _first_examples(source, field: str, limit: int) -> list:
    """The first `limit` examples (0: all) that hold `field`, in split order."""
    count = len(source) if not limit else min(limit, len(source))
    examples = [e for e in (source[i] for i in range(count)) if field in e and len(e[field])]
    if not examples:
        raise InvalidInput(f"the split has no examples with {field} to evaluate on")
    return examples


def _question_batches(ctx: EvalContext, spec):
    """(images of `batch_size` examples, each question's image row, questions, references)
    over the split's first `images` examples (0: all), the images decoded a batch at a time."""
    source = ctx.source(spec)
    count = len(source) if not spec.images else min(spec.images, len(source))
    for start in tqdm(range(0, count, spec.batch_size), desc="vqa", leave=False):
        examples = [source[i] for i in range(start, min(start + spec.batch_size, count))]
        rows = [(i, q, refs) for i, e in enumerate(examples) for q, refs in question_rows(e)]
        if rows:
            image_rows = np.array([i for i, _, _ in rows], np.int64)
            yield image_arrays(examples, ctx.pipeline), image_rows, [q for _, q, _ in rows], [r for _, _, r in rows]


def _scored(questions: list[str], score_batches, split: str) -> dict[str, float]:
    if not questions:
        raise InvalidInput(f"the {split} split has no questions to evaluate on")
    return accuracy_metrics(np.concatenate(score_batches), questions)


def _classified_answers(ctx: EvalContext, spec) -> dict[str, float]:
    """The answer head's top answer for every question."""
    inference, credits, questions = ctx.inference(spec.batch_size), [], []
    for images, image_rows, batch_questions, references in _question_batches(ctx, spec):
        ids, mask = ctx.tokenizer(batch_questions, ctx.pipeline.text_len)
        logits = inference.answer_logits(images, image_rows, ids, mask)
        credits.append(answer_credits(logits, ctx.data.answers, references))
        questions += batch_questions
    return _scored(questions, credits, spec.split)


def _decoded_answers(ctx: EvalContext, spec) -> dict[str, float]:
    """Answers written by the model after each question (`generate`), or the likeliest of the
    training answers (`rank`)."""
    model, tokenizer = ctx.model(), ctx.tokenizer
    if spec.mode == "rank":
        # The run's training answers (answers.json beside its checkpoints); a run trained on
        # other rows ranks the answers of its evaluation dataset's train split.
        answers = ctx.data.answers or training_answers(ctx.source(spec, "train"))
        ranker = AnswerRanker(model, tokenizer, answers, ctx.pipeline.text_len, spec.candidates, spec.batch_size)
    else:
        captioner = Captioner(model, tokenizer, beams=spec.beams)
    credits, questions = [], []
    for images, image_rows, batch_questions, references in _question_batches(ctx, spec):
        rows = {k: v[image_rows] for k, v in images.items()}
        if spec.mode == "rank":
            predicted = ranker(rows, batch_questions)
        else:
            predicted = generated_answers(captioner, rows, batch_questions, spec.max_tokens)
        credits.append(np.array([answer_score(p, r) for p, r in zip(predicted, references, strict=True)]))
        questions += batch_questions
    return _scored(questions, credits, spec.split)


def _generated(ctx: EvalContext, spec, task: str, shots: int) -> dict[str, float]:
    """Captions or answers generated after `shots` solved examples from the training split
    (Flamingo's in-context prompt; 0: the image alone)."""
    field = "captions" if task == "captioning" else "questions"
    examples = _first_examples(ctx.source(spec), field, spec.images)
    solved = shot_examples(ctx.source(spec, "train"), shots) if shots else []
    generate = ctx.generator(spec.beams)
    size = ctx.pipeline.image_size
    if task == "captioning":
        shapes = ctx.dataset_kind(spec).shapes_labels
        return caption_eval(generate, examples, solved, size, spec.batch_size, spec.max_tokens, shapes)[0]
    return vqa_eval(generate, examples, solved, size, spec.batch_size, spec.max_tokens)[0]


# How each family answers a question in words (modes generate and rank; Flamingo generates
# after a prompt of the image and the question).
ANSWERS_BY_FAMILY = {
    "flamingo": lambda ctx, spec: _generated(ctx, spec, "vqa", shots=0),
    "fusion": _decoded_answers,
    "coca": _decoded_answers,
    "prefix_lm": _decoded_answers,
}


def vqa(ctx: EvalContext, name: str, spec) -> dict[str, float]:
    """VQA accuracy (min(#humans/3, 1) per question): the answer head's top answer
    (`mode='classify'`), an answer generated from the image and question (`'generate'`), or
    the likeliest training answer (`'rank'`)."""
    if spec.mode == "classify":
        return _classified_answers(ctx, spec)
    return ANSWERS_BY_FAMILY[ctx.config.model.family](ctx, spec)


def _trained_captions(ctx: EvalContext, spec) -> dict[str, float]:
    """A captioning model's (CoCa's, PrefixLM's, BLIP's decoder's) captions of the images,
    `batch_size` at a time."""
    examples = _first_examples(ctx.source(spec), "captions", spec.images)
    captioner = Captioner(ctx.model(), ctx.tokenizer, beams=spec.beams)
    predicted = []
    for start in tqdm(range(0, len(examples), spec.batch_size), desc="captions", leave=False):
        batch = examples[start : start + spec.batch_size]
        predicted += captioner(image_arrays(batch, ctx.pipeline), spec.max_tokens)
    references = [[as_text(c) for c in e["captions"]] for e in examples]
    return caption_metrics(predicted, references, ctx.dataset_kind(spec).shapes_labels)


# How each family makes a caption from an image alone (Flamingo: a prompt of just <image>).
CAPTIONS_BY_FAMILY = {
    "flamingo": lambda ctx, spec: _generated(ctx, spec, "captioning", shots=0),
    "coca": _trained_captions,
    "prefix_lm": _trained_captions,
    "fusion": _trained_captions,  # BLIP's image-grounded decoder
}


def captioning(ctx: EvalContext, name: str, spec) -> dict[str, float]:
    """BLEU-4, CIDEr-D and token F1 (shapes: parsed objects too) of captions generated for
    the split's first `images` captioned images."""
    return CAPTIONS_BY_FAMILY[ctx.config.model.family](ctx, spec)


def few_shot(ctx: EvalContext, name: str, spec) -> dict[str, float]:
    """Captioning or VQA (`task`) after `shots` solved examples in the prompt."""
    return _generated(ctx, spec, spec.task, shots=spec.shots)


# --- held-out next-token metrics ---------------------------------------------------------------


def perplexity(ctx: EvalContext, name: str, spec) -> dict[str, float]:
    """Next-token loss, accuracy and perplexity of held-out text (decoder LMs) or interleaved
    documents (Flamingo), over the split's first `limit` examples."""
    model, source = ctx.model(), ctx.source(spec)
    if ctx.dataset_kind(spec).documents:
        p = ctx.pipeline
        transform = DocumentTransform(ctx.tokenizer, p.image_size, p.text_len, p.chunks, p.lm_vocab_size)
        return evaluate_documents(model, transform, source, spec.batch_size, spec.limit)
    return evaluate_lm(model, ctx.tokenizer, source, ctx.pipeline.text_len, spec.batch_size, spec.limit)


# --- region proposals ----------------------------------------------------------------------------


def proposals(ctx: EvalContext, name: str, spec) -> dict[str, float]:
    """Recall of the split's boxes by each image's top_k proposals at IoU >= `iou`, the mean IoU
    of the recalled boxes' best proposals, and (with a box head) how often it names a box's class."""
    source = ctx.source(spec)
    count = len(source) if not spec.images else min(spec.images, len(source))
    scorer, overlaps, hits, known = ProposalScorer(ctx.model()), [], 0, 0
    for start in tqdm(range(0, count, spec.batch_size), desc="proposals", leave=False):
        examples = [source[i] for i in range(start, min(start + spec.batch_size, count))]
        images, boxes = image_arrays(examples, ctx.pipeline)["image"], [boxes_of(e) for e in examples]
        overlaps.append(scorer.overlaps(images, boxes))
        if scorer.has_box_head:
            labels = [box_labels_of(e, len(b)) for e, b in zip(examples, boxes, strict=True)]
            batch_hits = scorer.box_hits(images, boxes, labels)
            hits, known = hits + batch_hits[0], known + batch_hits[1]
    return {**proposal_metrics(np.concatenate(overlaps), spec.iou), **box_accuracy(hits, known)}


EVALUATORS: dict[str, Callable[[EvalContext, str, object], dict[str, float]]] = {
    "retrieval": retrieval,
    "zero_shot": zero_shot,
    "vqa": vqa,
    "captioning": captioning,
    "few_shot": few_shot,
    "perplexity": perplexity,
    "proposals": proposals,
}


def named(metrics: dict[str, float], name: str) -> dict[str, float]:
    """'<family>/<metric>' -> '<name>/<metric>'."""
    return {f"{name}/{key.split('/', 1)[-1]}": value for key, value in metrics.items()}


def run_evaluator(ctx: EvalContext, name: str, spec) -> dict[str, float]:
    start = time.perf_counter()
    try:
        metrics = named(EVALUATORS[spec.kind](ctx, name, spec), name)
    except InvalidInput as err:
        if str(err).startswith(f"evals.{name}"):
            raise
        raise InvalidInput(f"evals.{name} ({spec.kind}): {err}") from None
    logger.info("evals.%s (%s): %.1f s", name, spec.kind, time.perf_counter() - start)
    return metrics
