"""Text from a model trained to write it (CoCa, PrefixLM, BLIP's decoder): captions after the
start token ([CLS]) and optional first words, answers after "[CLS] question [SEP]". The images'
memory (cross-attention keys and values; PrefixLM: image tokens) is computed once per batch,
and every new token reuses the KV cache until the end token ([SEP])."""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from vlpjax.data.tokenizer import TextTokenizer
from vlpjax.models.decoding import Step, beam_search, greedy, left_pad


@functools.partial(jax.jit, static_argnums=0)
def _caption_memory(graphdef, state, images):
    """Compiled once per model structure and batch shape, whatever the weights."""
    return nnx.merge(graphdef, state).caption_memory(images)


class Captioner:
    def __init__(self, model, tokenizer: TextTokenizer, beams: int = 1):
        if tokenizer.cls_id is None or tokenizer.sep_id is None:
            raise ValueError("captioning starts at the tokenizer's [CLS] (or <s>) and ends at [SEP] (or </s>)")
        self.graphdef, self.state = nnx.split(model)
        self.model, self.tokenizer, self.beams = model, tokenizer, beams

    def caption_prompt(self, prefix: str = "") -> list[int]:
        """[CLS] and the `prefix` words: where a caption starts."""
        return [self.tokenizer.cls_id, *(self.tokenizer.encode_plain(prefix) if prefix.strip() else [])]

    def generate_ids(
        self, images: Mapping[str, np.ndarray], max_new_tokens: int, prompts: Sequence[Sequence[int]]
    ) -> np.ndarray:
        """[B, max_new_tokens] token ids after each row's prompt (left-padded to one length);
        [SEP] repeats after a row's end."""
        memory = _caption_memory(self.graphdef, self.state, dict(images))  # once per batch of images
        ids, mask = left_pad([list(p) for p in prompts], self.tokenizer.fill_id)
        cache = self.model.empty_cache(len(ids), self.model.memory_slots(memory) + ids.shape[1] + max_new_tokens)
        step, eos = Step(self.graphdef, self.state, "decode", (memory,)), self.tokenizer.sep_id
        if self.beams > 1:
            return np.asarray(beam_search(step, ids, mask, cache, max_new_tokens, self.beams, eos_id=eos)[0])
        return np.asarray(greedy(step, ids, mask, cache, max_new_tokens, eos_id=eos))

    def __call__(self, images: Mapping[str, np.ndarray], max_new_tokens: int, prefix: str = "") -> list[str]:
        """A caption of each image, after the `prefix` words."""
        rows = len(next(iter(images.values())))
        return self.texts(self.generate_ids(images, max_new_tokens, [self.caption_prompt(prefix)] * rows))

    def texts(self, rows: np.ndarray) -> list[str]:
        return [self.text(row) for row in rows]

    def text(self, ids: np.ndarray) -> str:
        ids = [int(i) for i in ids]
        end = ids.index(self.tokenizer.sep_id) if self.tokenizer.sep_id in ids else len(ids)
        return self.tokenizer.decode(ids[:end]).strip()
