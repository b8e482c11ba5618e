"""Held-out next-token loss, accuracy and perplexity: of a decoder LM on the test split's
texts, and of Flamingo on held-out interleaved documents."""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import jax
import numpy as np
from flax import nnx

from vlpjax.data.interleaved import example_texts
from vlpjax.data.tokenizer import TextTokenizer
from vlpjax.objectives.causal_lm import causal_lm_loss


def held_out_lm_metrics(model, batches: Iterable[Mapping[str, np.ndarray]], prefix: str = "lm") -> dict[str, float]:
    """Token-weighted means over all batches (rows: text_ids, text_mask and, for Flamingo, media)."""
    graphdef, state = nnx.split(model)
    ignore = getattr(model, "ignored_targets", ())

    @jax.jit
    def sums(state, batch):
        loss, m = causal_lm_loss(
            nnx.merge(graphdef, state)(batch)["logits"], batch["text_ids"], batch["text_mask"], ignore_ids=ignore
        )
        return m["lm/tokens"], m["lm/tokens"] * loss, m["lm/tokens"] * m["lm/accuracy"]

    totals = np.zeros(3)
    for batch in batches:
        totals += np.asarray(sums(state, dict(batch)))
    tokens, nll, correct = totals
    if not tokens:
        raise ValueError("no held-out tokens to score")
    return {
        f"{prefix}/test_loss": nll / tokens,
        f"{prefix}/test_perplexity": math.exp(nll / tokens),
        f"{prefix}/test_accuracy": correct / tokens,
        f"{prefix}/test_tokens": tokens,
    }


def evaluate_lm(
    model, tokenizer: TextTokenizer, test_source, text_len: int, batch_size: int, limit: int = 1000
) -> dict[str, float]:
    texts = [t for i in range(min(limit, len(test_source))) for t in example_texts(test_source[i])]
    ids, mask = tokenizer(texts, text_len)
    batches = (
        {"text_ids": ids[s : s + batch_size], "text_mask": mask[s : s + batch_size]}
        for s in range(0, len(texts), batch_size)
    )
    return held_out_lm_metrics(model, batches)


def evaluate_documents(model, transform, test_source, batch_size: int, limit: int = 1000) -> dict[str, float]:
    """Flamingo's next-token metrics on held-out documents, made into rows by `transform`."""
    rows = [transform(test_source[i]) for i in range(min(limit, len(test_source)))]
    batches = (
        {k: np.stack([r[k] for r in rows[s : s + batch_size]]) for k in rows[0]}
        for s in range(0, len(rows), batch_size)
    )
    return held_out_lm_metrics(model, batches)
