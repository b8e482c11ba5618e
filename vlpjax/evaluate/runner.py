"""Evaluate a model on the in-memory test split: retrieval (ITC, and ITM re-ranking for fusion
models), zero-shot classification, VQA accuracy, and a PNG of top-5 retrievals."""

from __future__ import annotations

import os
from typing import Callable, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from vlpjax.data.images import model_pixels
from vlpjax.data.pipeline import image_arrays
from vlpjax.data.shapes import CLASS_NAMES
from vlpjax.data.tokenizer import as_text
from vlpjax.errors import InvalidInput
from vlpjax.evaluate.report import top_k_png
from vlpjax.evaluate.retrieval import reranked_retrieval_metrics, retrieval_metrics
from vlpjax.evaluate.vqa import vqa_accuracy_from_logits
from vlpjax.evaluate.zero_shot import class_embeddings, zero_shot_accuracy, zero_shot_metrics
from vlpjax.models.layers import Encoded

PNG_FILE = "retrieval_top5.png"
IMAGE_KEYS = ("image", "regions", "boxes", "region_mask")


def _unimodal_tokens(encoded: Encoded, prefix: str) -> dict:
    return {f"{prefix}_tokens": encoded.tokens, f"{prefix}_mask": encoded.mask}


def _itm_match_logit(model, batch):
    """Fusion and ITM head only: the towers' tokens come encoded once per image and text."""
    text = Encoded(batch["text_tokens"], None, batch["text_mask"])
    image = Encoded(batch["image_tokens"], None, batch["image_mask"])
    logits = model.itm_logits(text, image)
    return logits[:, 1] - logits[:, 0]


class Inference:
    """Jitted model methods with the run's parameters, fed in fixed-size (padded) batches."""

    def __init__(self, graphdef, params, frozen, mesh: Mesh, batch_size: int):
        self.params, self.frozen, self.batch_size = params, frozen, batch_size
        self.replicated = NamedSharding(mesh, P())

        def jitted(fn: Callable):
            return jax.jit(lambda p, f, batch: fn(nnx.merge(graphdef, p, f), batch), out_shardings=self.replicated)

        self._image = jitted(lambda m, b: m.embed_image(b))
        self._text = jitted(lambda m, b: m.embed_text(b))
        self._image_tokens = jitted(lambda m, b: _unimodal_tokens(m.encode_image(b), "image"))
        self._text_tokens = jitted(lambda m, b: _unimodal_tokens(m.encode_text(b["text_ids"], b["text_mask"]), "text"))
        self._itm = jitted(_itm_match_logit)
        self._answers = jitted(lambda m, b: m.answer_logits(b))

    def _batched(
        self,
        fn,
        arrays: Mapping[str, np.ndarray],
        rows: Mapping[str, np.ndarray] | None = None,
        desc: str | None = None,
    ):
        """fn over fixed-size batches (its output: an array or a pytree of them). `rows[k]`, where
        given, picks the rows of `arrays[k]` that make up the inputs, batch by batch, so pairs of
        a large test split are never all in memory."""
        rows = rows or {}
        n = len(next(iter(rows.values()))) if rows else len(next(iter(arrays.values())))
        out = []
        for start in tqdm(range(0, n, self.batch_size), desc=desc, disable=desc is None, leave=False):
            index = np.arange(start, min(start + self.batch_size, n))
            index = np.concatenate([index, np.repeat(index[-1:], self.batch_size - len(index))])  # one compiled shape
            chunk = {k: v[rows[k][index]] if k in rows else v[index] for k, v in arrays.items()}
            chunk = jax.device_put(chunk, self.replicated)
            kept = min(self.batch_size, n - start)
            out.append(jax.tree.map(lambda x, kept=kept: np.asarray(x)[:kept], fn(self.params, self.frozen, chunk)))
        return jax.tree.map(lambda *parts: np.concatenate(parts), *out)

    def images(self, images: Mapping[str, np.ndarray]) -> np.ndarray:
        return self._batched(self._image, images)

    def texts(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._batched(self._text, {"text_ids": ids, "text_mask": mask})

    def image_tokens(self, images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The image tower's tokens and mask, the fusion's image input."""
        return self._batched(self._image_tokens, images)

    def text_tokens(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """The text tower's tokens and mask (before any cross-attention layer)."""
        return self._batched(self._text_tokens, {"text_ids": ids, "text_mask": mask})

    def match_logits(
        self,
        image_tokens: Mapping[str, np.ndarray],
        image_rows: np.ndarray,
        text_tokens: Mapping[str, np.ndarray],
        text_rows: np.ndarray,
    ) -> np.ndarray:
        """ITM score (match minus no-match logit) of each (text row, image row) pair, from the
        towers' cached tokens (`image_tokens`, `text_tokens`)."""
        rows = {**{k: image_rows for k in image_tokens}, **{k: text_rows for k in text_tokens}}
        return self._batched(self._itm, {**image_tokens, **text_tokens}, rows, desc="itm re-rank")

    def answer_logits(
        self,
        images: Mapping[str, np.ndarray],
        image_rows: np.ndarray,
        question_ids: np.ndarray,
        question_mask: np.ndarray,
    ) -> np.ndarray:
        arrays = {**images, "question_ids": question_ids, "question_mask": question_mask}
        rows = {k: image_rows for k in images}
        rows.update(question_ids=np.arange(len(image_rows)), question_mask=np.arange(len(image_rows)))
        return self._batched(self._answers, arrays, rows, desc="vqa")


def image_inputs(eval_data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: eval_data[k] for k in IMAGE_KEYS if k in eval_data}


def evaluate(
    inference: Inference,
    eval_data: Mapping[str, np.ndarray],
    tokenizer,
    text_len: int,
    *,
    zero_shot: bool = True,
    itm_top_k: int = 0,
    png_path: str | None = None,
    png_queries: int = 4,
) -> dict[str, float]:
    images = image_inputs(eval_data)
    img_emb = inference.images(images)
    txt_emb = inference.texts(eval_data["text_ids"], eval_data["text_mask"])
    metrics = retrieval_metrics(img_emb, txt_emb)
    if itm_top_k:
        # Each tower runs once per image and text; only the fusion runs per candidate pair.
        image_tokens, text_tokens = (
            inference.image_tokens(images),
            inference.text_tokens(eval_data["text_ids"], eval_data["text_mask"]),
        )

        def score(t, i):
            return inference.match_logits(image_tokens, i, text_tokens, t)

        metrics.update(reranked_retrieval_metrics(img_emb, txt_emb, score, itm_top_k))
    if zero_shot and "label" in eval_data:
        classes = class_embeddings(lambda texts: inference.texts(*tokenizer(texts, text_len)), list(CLASS_NAMES))
        metrics["zero_shot/accuracy"] = zero_shot_accuracy(img_emb, classes, eval_data["label"])
        single = eval_data["object_count"] == 1
        if single.any():
            metrics["zero_shot/single_object_accuracy"] = zero_shot_accuracy(
                img_emb[single], classes, eval_data["label"][single]
            )
    if png_path and png_queries:
        queries = np.arange(min(png_queries, len(txt_emb)))
        similarity = txt_emb[queries] @ img_emb.T
        top_k_png(png_path, [str(c) for c in eval_data["captions"][queries]], similarity, eval_data["image"], queries)
    return metrics


def evaluate_vqa(inference: Inference, vqa_data: Mapping, answers: list[str]) -> dict[str, float]:
    """Accuracy of the top answer over every test question (the VQA benchmark's scoring); a
    question whose logits are all NaN scores 0, tied top answers their mean credit."""
    logits = inference.answer_logits(
        image_inputs(vqa_data), vqa_data["image_index"], vqa_data["question_ids"], vqa_data["question_mask"]
    )
    return vqa_accuracy_from_logits(logits, answers, vqa_data["references"], vqa_data["questions"])


def stream_retrieval_embeddings(
    inference: Inference, source, tokenizer, config, all_captions: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image embeddings [N, E], caption embeddings [T, E], caption_image [T]) of a split's
    images with captions, decoded and embedded a batch of images at a time: only the embeddings
    stay in memory. `all_captions`: every caption of an image (COCO / Flickr retrieval), else
    its first (what `eval_arrays` holds)."""
    images, texts, owners = [], [], []
    batch = []

    def flush():
        images.append(inference.images(image_arrays(batch, config)))
        captions = [[as_text(c) for c in (e["captions"] if all_captions else e["captions"][:1])] for e in batch]
        first_image = sum(len(part) for part in images[:-1])
        owners.extend(first_image + i for i, caps in enumerate(captions) for _ in caps)
        ids, mask = tokenizer([c for caps in captions for c in caps], config.text_len)
        texts.append(inference.texts(ids, mask))
        batch.clear()

    for i in tqdm(range(len(source)), desc="retrieval images", leave=False):
        example = source[i]
        if len(example["captions"]):
            batch.append(example)
        if len(batch) == inference.batch_size:
            flush()
    if batch:
        flush()
    if not images:
        raise InvalidInput("the test split has no examples with captions to evaluate on")
    return np.concatenate(images), np.concatenate(texts), np.asarray(owners, np.int64)


def stream_image_embeddings(inference: Inference, source, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [N, E], labels [N]) of a classification split, decoded and embedded a batch
    at a time: the split's images are never all in memory, only their embeddings."""
    embeddings, labels = [], []
    for start in tqdm(range(0, len(source), inference.batch_size), desc="zero-shot images", leave=False):
        examples = [source[i] for i in range(start, min(start + inference.batch_size, len(source)))]
        pixels = np.stack([model_pixels(e["image"], image_size) for e in examples])
        embeddings.append(inference.images({"image": pixels}))
        labels.extend(int(e["label"]) for e in examples)
    return np.concatenate(embeddings), np.asarray(labels, np.int64)


def evaluate_zero_shot_folder(
    inference: Inference, tokenizer, text_len: int, source, class_names, templates, image_size: int
) -> dict[str, float]:
    """zero_shot/top1, top5 and mean_per_class on a built image_class_folder split."""
    img_emb, labels = stream_image_embeddings(inference, source, image_size)
    classes = class_embeddings(lambda texts: inference.texts(*tokenizer(texts, text_len)), class_names, templates)
    return zero_shot_metrics(img_emb, classes, labels)


def png_path(workdir: str) -> str:
    return os.path.join(workdir, PNG_FILE)
