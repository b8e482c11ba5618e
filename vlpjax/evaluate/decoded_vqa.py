"""VQA by a model that writes text (BLIP's decoder, CoCa, PrefixLM), after "[CLS] question [SEP]":

- `generate`: the answer decoded greedily (or with beams) up to [SEP];
- `rank` (BLIP): the training answers first ranked by the probability of their first token,
  then the `candidates` best by the log-likelihood of all their tokens and the closing [SEP];
  the likeliest is the answer. A candidate whose likelihood is not finite ranks last.

Both score with the VQA rule (data/answers.py) after the usual normalisation.
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlpjax.data.answers import normalize_answer
from vlpjax.data.question_answer import question_answer_ids, question_prompt
from vlpjax.data.tokenizer import TextTokenizer
from vlpjax.evaluate.captioner import Captioner
from vlpjax.objectives.causal_lm import next_token_targets

Array = jax.Array


def generated_answers(
    captioner: Captioner, images: Mapping[str, np.ndarray], questions: Sequence[str], max_tokens: int
) -> list[str]:
    """One answer per question (row i of `images` is question i's image)."""
    room = captioner.model.max_text_len - max_tokens
    prompts = [question_prompt(captioner.tokenizer, q, room) for q in questions]
    return captioner.texts(captioner.generate_ids(images, max_tokens, prompts))


@functools.partial(jax.jit, static_argnums=0)
def _answer_log_likelihood(graphdef, state, batch, prefix_len) -> Array:
    """[N] the summed log-probability of each row's tokens from position prefix_len on."""
    logits = nnx.merge(graphdef, state).text_logits(batch, prefix_len)
    targets, weights = next_token_targets(batch["text_ids"], batch["text_mask"])
    weights &= jnp.arange(1, targets.shape[1] + 1)[None, :] >= prefix_len[:, None]
    logprobs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(weights, picked, 0.0), axis=1)


@functools.partial(jax.jit, static_argnums=0)
def _first_token_logprobs(graphdef, state, batch, prefix_len) -> Array:
    """[N, vocab] log-probabilities of the token after each row's prompt."""
    logits = nnx.merge(graphdef, state).text_logits(batch, prefix_len)
    last = jnp.take_along_axis(logits, (prefix_len - 1)[:, None, None], axis=1)[:, 0]
    return jax.nn.log_softmax(last.astype(jnp.float32), axis=-1)


class AnswerRanker:
    """Picks each question's likeliest answer among the training answers."""

    def __init__(
        self, model, tokenizer: TextTokenizer, answers: Sequence[str], text_len: int, candidates: int, chunk: int
    ):
        if not answers:
            raise ValueError("ranking answers needs the training split's answers; it has none")
        self.graphdef, self.state = nnx.split(model)
        self.tokenizer, self.text_len, self.candidates, self.chunk = tokenizer, text_len, candidates, chunk
        self.answers = list(dict.fromkeys(normalize_answer(a) for a in answers))
        # Each answer's first token: [SEP] for an answer that tokenizes to nothing.
        self.first_tokens = np.array([([*tokenizer.encode_plain(a), tokenizer.sep_id])[0] for a in self.answers])

    def __call__(self, images: Mapping[str, np.ndarray], questions: Sequence[str]) -> list[str]:
        """The best answer per question (row i of `images` is question i's image); '' where no
        candidate has a finite likelihood."""
        shortlist = self._shortlist(images, questions)
        rows = [(q, a) for q, answers in zip(range(len(questions)), shortlist, strict=True) for a in answers]
        encoded = [question_answer_ids(self.tokenizer, questions[q], self.answers[a], self.text_len) for q, a in rows]
        batch = {k: v[[q for q, _ in rows]] for k, v in images.items()}
        batch["text_ids"], batch["text_mask"] = np.stack([e[0] for e in encoded]), np.stack([e[1] for e in encoded])
        scores = self._chunked(_answer_log_likelihood, batch, np.array([e[2] for e in encoded], np.int32))
        scores = np.where(np.isfinite(scores), scores, -np.inf)
        best, start = [], 0
        for answers in shortlist:
            own = scores[start : start + len(answers)]
            start += len(answers)
            best.append(self.answers[answers[int(np.argmax(own))]] if np.isfinite(own).any() else "")
        return best

    def _shortlist(self, images: Mapping[str, np.ndarray], questions: Sequence[str]) -> list[np.ndarray]:
        """Each question's candidate answer indices: all, or the `candidates` whose first token
        is likeliest after the question."""
        everything = np.arange(len(self.answers))
        if len(self.answers) <= self.candidates:
            return [everything] * len(questions)
        prompts = [question_prompt(self.tokenizer, q, self.text_len) for q in questions]
        ids = np.full((len(prompts), self.text_len), self.tokenizer.fill_id, np.int32)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = prompt
        lengths = np.array([len(p) for p in prompts], np.int32)
        batch = dict(images, text_ids=ids, text_mask=np.arange(self.text_len)[None] < lengths[:, None])
        logprobs = self._chunked(_first_token_logprobs, batch, lengths)
        first = np.where(np.isfinite(logprobs), logprobs, -np.inf)[:, self.first_tokens]
        return [np.argsort(-row, kind="stable")[: self.candidates] for row in first]

    def _chunked(self, fn, batch: Mapping[str, np.ndarray], prefix_len: np.ndarray) -> np.ndarray:
        """fn over `chunk` rows at a time, the last chunk padded by repeating its final row (one
        compiled shape)."""
        count, out = len(prefix_len), []
        for start in range(0, count, self.chunk):
            rows = np.minimum(np.arange(start, start + self.chunk), count - 1)
            part = {k: v[rows] for k, v in batch.items()}
            out.append(np.asarray(fn(self.graphdef, self.state, part, prefix_len[rows]))[: count - start])
        return np.concatenate(out)
