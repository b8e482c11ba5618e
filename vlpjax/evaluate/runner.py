"""Evaluate a dual encoder on the in-memory test split: retrieval, zero-shot, a top-5 PNG."""
from __future__ import annotations

import os
from typing import Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vlpjax.data.shapes import CLASS_NAMES
from vlpjax.evaluate.report import top_k_png
from vlpjax.evaluate.retrieval import retrieval_metrics
from vlpjax.evaluate.zero_shot import class_embeddings, zero_shot_accuracy

PNG_FILE = "retrieval_top5.png"


class Embedder:
    """Jitted image and text embedding with the run's parameters, fed in fixed-size batches."""

    def __init__(self, graphdef, params, frozen, mesh: Mesh, batch_size: int):
        self.params, self.frozen, self.batch_size = params, frozen, batch_size
        self.replicated = NamedSharding(mesh, P())

        def image_fn(params, frozen, batch):
            return nnx.merge(graphdef, params, frozen).embed_image(batch)

        def text_fn(params, frozen, batch):
            return nnx.merge(graphdef, params, frozen).embed_text(batch)

        self._image = jax.jit(image_fn, out_shardings=self.replicated)
        self._text = jax.jit(text_fn, out_shardings=self.replicated)

    def _batched(self, fn, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(arrays.values())))
        out = []
        for start in range(0, n, self.batch_size):
            chunk = {k: v[start : start + self.batch_size] for k, v in arrays.items()}
            rows = len(next(iter(chunk.values())))
            if rows < self.batch_size:  # pad to one compiled shape
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], self.batch_size - rows, 0)]) for k, v in chunk.items()}
            chunk = jax.device_put(chunk, self.replicated)
            out.append(np.asarray(fn(self.params, self.frozen, chunk))[:rows])
        return np.concatenate(out)

    def images(self, images: np.ndarray) -> np.ndarray:
        return self._batched(self._image, {"image": images})

    def texts(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._batched(self._text, {"text_ids": ids, "text_mask": mask})


def evaluate(embedder: Embedder, eval_data: Mapping[str, np.ndarray], tokenizer, text_len: int, *, zero_shot: bool = True, png_path: str | None = None, png_queries: int = 4) -> dict[str, float]:
    img_emb = embedder.images(eval_data["image"])
    txt_emb = embedder.texts(eval_data["text_ids"], eval_data["text_mask"])
    metrics = retrieval_metrics(img_emb, txt_emb)
    if zero_shot and "label" in eval_data:
        classes = class_embeddings(lambda texts: embedder.texts(*tokenizer(texts, text_len)), list(CLASS_NAMES))
        metrics["zero_shot/accuracy"] = zero_shot_accuracy(img_emb, classes, eval_data["label"])
        single = eval_data["object_count"] == 1
        if single.any():
            metrics["zero_shot/single_object_accuracy"] = zero_shot_accuracy(img_emb[single], classes, eval_data["label"][single])
    if png_path and png_queries:
        queries = np.arange(min(png_queries, len(txt_emb)))
        similarity = txt_emb[queries] @ img_emb.T
        top_k_png(png_path, [str(c) for c in eval_data["captions"][queries]], similarity, eval_data["image"], queries)
    return metrics


def png_path(workdir: str) -> str:
    return os.path.join(workdir, PNG_FILE)
