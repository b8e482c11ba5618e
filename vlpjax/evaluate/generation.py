"""Generative evaluation of Flamingo: few-shot captioning and open-ended VQA on held-out images.

A prompt is k solved chunks from the training split, then the query chunk left open:

    [BOS] <image>caption 1<|endofchunk|> ... <image>            (captioning)
    [BOS] <image>question q1 answer a1<|endofchunk|> ... <image>question q answer   (VQA)

The model continues it greedily (or with beam search) until `<|endofchunk|>`. Media are encoded
once per batch of prompts; every new token reuses the LM's KV cache.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from vlpjax.data.fields import question_rows
from vlpjax.data.images import decode_image, normalize, resize
from vlpjax.data.interleaved import ChunkTokens, qa_text
from vlpjax.data.tokenizer import TextTokenizer, as_text
from vlpjax.evaluate.captions import caption_metrics
from vlpjax.evaluate.vqa import vqa_accuracy
from vlpjax.models.decoding import Step, beam_search, greedy, left_pad

PROMPT_ROUNDING = 16  # prompts are padded to a multiple of this: few distinct compiled shapes


class Generator:
    """Continuations of interleaved prompts with a Flamingo model's weights: one jitted call
    encodes a batch's media, one more makes all its new tokens."""

    def __init__(self, model, tokenizer: TextTokenizer, beams: int = 1):
        graphdef, self.state = nnx.split(model)
        self.graphdef, self.model, self.beams = graphdef, model, beams
        self.tokens = ChunkTokens(tokenizer, model.lm.config.vocab_size)
        self.tokenizer = tokenizer
        self._encode = jax.jit(lambda s, media: nnx.merge(graphdef, s).encode_media(media))

    def generate_ids(self, prompts: Sequence[list[int]], media: np.ndarray, max_new_tokens: int) -> np.ndarray:
        """[B, max_new_tokens] token ids after each prompt; EOS (`<|endofchunk|>`) repeats after the end."""
        ids, mask = left_pad(list(prompts), self.tokenizer.fill_id, round_to=PROMPT_ROUNDING)
        latents = self.encode(media)  # once per batch: every step reuses it
        step = Step(self.graphdef, self.state, "decode", (latents,))
        cache = self.model.empty_cache(len(prompts), ids.shape[1] + max_new_tokens)
        eos = self.tokens.chunk_end_id
        if self.beams > 1:
            return np.asarray(beam_search(step, ids, mask, cache, max_new_tokens, self.beams, eos_id=eos)[0])
        return np.asarray(greedy(step, ids, mask, cache, max_new_tokens, eos_id=eos))

    def encode(self, media: np.ndarray) -> jax.Array:
        """Media [B, M, H, W, 3] -> their latents [B, M * num_latents, D]."""
        return self._encode(self.state, media)

    def __call__(self, prompts: Sequence[list[int]], media: np.ndarray, max_new_tokens: int) -> list[str]:
        """Texts generated after each prompt, cut at `<|endofchunk|>`."""
        return [self.text(row) for row in self.generate_ids(prompts, media, max_new_tokens)]

    def text(self, ids: np.ndarray) -> str:
        stops = {self.tokens.chunk_end_id, self.tokens.image_id, self.tokenizer.sep_id}
        kept = []
        for i in ids:
            if int(i) in stops:
                break
            kept.append(int(i))
        return self.tokenizer.decode(kept).strip()


def _image(example, image_size: int) -> np.ndarray:
    return normalize(resize(decode_image(example["image"]), image_size))


def shot_examples(train_source, shots: int, seed: int = 0) -> list[Any]:
    rng = np.random.default_rng(seed)
    return [train_source[int(i)] for i in rng.choice(len(train_source), size=shots, replace=False)] if shots else []


def caption_eval(
    generate: Generator,
    test_examples,
    shots: Sequence,
    image_size: int,
    batch_size: int,
    max_new_tokens: int,
    shapes: bool,
):
    t = generate.tokens
    shot_chunks = [t.chunk(as_text(e["captions"][0])) for e in shots]
    shot_media = [_image(e, image_size) for e in shots]
    predicted, references = [], []
    for start in tqdm(range(0, len(test_examples), batch_size), desc="captions", leave=False):
        batch = test_examples[start : start + batch_size]
        prompt = t.ids(shot_chunks + [[t.image_id]], eos=False)
        prompts = [prompt] * len(batch)
        media = np.stack([np.stack(shot_media + [_image(e, image_size)]) for e in batch])
        predicted += generate(prompts, media, max_new_tokens)
        references += [[as_text(c) for c in e["captions"]] for e in batch]
    return caption_metrics(predicted, references, shapes), predicted


def vqa_eval(
    generate: Generator, test_examples, shots: Sequence, image_size: int, batch_size: int, max_new_tokens: int
):
    """Every question of the test images; shot j answers the same question slot (its type in shapes)."""
    t = generate.tokens
    rows = [(e, q, refs, slot) for e in test_examples for slot, (q, refs) in enumerate(question_rows(e))]
    predicted = []
    for start in tqdm(range(0, len(rows), batch_size), desc="vqa (generated)", leave=False):
        batch = rows[start : start + batch_size]
        prompts, media = [], []
        for example, question, _, slot in batch:
            solved = [s for s in shots if len(question_rows(s)) > slot]
            chunks = [t.chunk(qa_text(*_first_answer(question_rows(s)[slot]))) for s in solved]
            chunks.append(t.chunk(qa_text(question), closed=False))
            prompts.append(t.ids(chunks, eos=False))
            media.append(np.stack([_image(s, image_size) for s in solved] + [_image(example, image_size)]))
        predicted += generate(prompts, _same_count(media), max_new_tokens)
    return vqa_accuracy(predicted, [r for _, _, r, _ in rows], [q for _, q, _, _ in rows]), predicted


def _first_answer(row):
    question, refs = row
    return question, refs[0]


def _same_count(media: list[np.ndarray]) -> np.ndarray:
    """Rows with fewer shots get blank trailing images: no `<image>` token refers to them."""
    most = max(len(m) for m in media)
    return np.stack([np.concatenate([m, np.zeros((most - len(m), *m.shape[1:]), m.dtype)]) for m in media])
