"""The model's jitted inference calls for evaluation: embeddings, tower tokens, ITM scores and
answer logits, fed in fixed-size (padded) batches."""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from vlpjax.models.layers import Encoded


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
