"""Interleaved image-text sequences for Flamingo, and plain text for decoder-LM pretraining.

An interleaved sequence is text in which `<image>` stands where an image goes and
`<|endofchunk|>` closes the text that belongs to it:

    [BOS] <image> a small red circle at the top <|endofchunk|> <image> question how many
    objects are there? answer two <|endofchunk|> [EOS]

Its batch rows are `text_ids` / `text_mask` [L] and `media` [M, H, W, 3], the images in the
order of their `<image>` tokens. A caption dataset is read as chunks `<image>caption<|endofchunk|>`
and a question as `<image>question q answer a<|endofchunk|>`; each training sequence joins
`chunks` random examples, so the model learns to look at the latest image and few-shot prompts
(k solved chunks, then the query) look like its training text.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from vlpjax.data.fields import question_rows
from vlpjax.data.images import decode_image, normalize, resize
from vlpjax.data.tokenizer import TextTokenizer, as_text

QUESTION_FORMAT = "question {question} answer"  # no colons: the shapes WordPiece vocabulary has none


def qa_text(question: str, answer: str | None = None) -> str:
    prompt = QUESTION_FORMAT.format(question=question)
    return prompt if answer is None else f"{prompt} {answer}"


def example_texts(example: Mapping[str, Any]) -> list[str]:
    """Every text an example offers as a chunk: its captions and its answered questions."""
    return caption_texts(example) + question_texts(example)


def caption_texts(example: Mapping[str, Any]) -> list[str]:
    return [as_text(c) for c in example.get("captions", [])]


def question_texts(example: Mapping[str, Any]) -> list[str]:
    return [qa_text(q, refs[0]) for q, refs in question_rows(example)] if len(example.get("questions", [])) else []


class ChunkTokens:
    """Token ids of interleaved sequences. The two new tokens take the first ids after the
    LM's vocabulary (`lm_vocab_size`, which may exceed the tokenizer's): Flamingo's
    `image_id` and `chunk_end_id`."""

    def __init__(self, tokenizer: TextTokenizer, lm_vocab_size: int | None = None):
        self.tokenizer = tokenizer
        base = lm_vocab_size or tokenizer.vocab_size
        if base < tokenizer.vocab_size:
            raise ValueError(f"the LM has {base} token ids but its tokenizer makes {tokenizer.vocab_size}")
        self.image_id, self.chunk_end_id = base, base + 1
        self.bos = [tokenizer.cls_id] if tokenizer.cls_id is not None else []

    def chunk(self, text: str, closed: bool = True) -> list[int]:
        """<image> text [<|endofchunk|>]: an open chunk is a prompt the model continues."""
        return [self.image_id] + self.tokenizer.encode_plain(text) + ([self.chunk_end_id] if closed else [])

    def ids(self, chunks: Sequence[list[int]], eos: bool = True) -> list[int]:
        """[BOS] chunks... [EOS]: a whole sequence (a prompt when eos=False), unpadded."""
        ids = self.bos + [t for c in chunks for t in c]
        if eos and self.tokenizer.sep_id is not None:
            ids.append(self.tokenizer.sep_id)
        return ids

    def sequence(self, chunks: Sequence[list[int]], length: int, eos: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(ids [length], mask [length]): the sequence truncated or right-padded; mask marks its tokens."""
        ids = self.ids(chunks, eos)[:length]
        out = np.full(length, self.tokenizer.fill_id, np.int32)
        out[: len(ids)] = ids
        mask = np.zeros(length, bool)
        mask[: len(ids)] = True
        return out, mask


class InterleavedTransform:
    """One training sequence from `chunks` examples: this one and chunks-1 random others.

    All chunks of a sequence are captions, or all are answered questions (half the sequences
    each), so a sequence looks like a few-shot prompt and the model learns to continue in the
    form of the chunks before it."""

    def __init__(
        self, source, tokenizer: TextTokenizer, image_size: int, text_len: int, chunks: int, lm_vocab_size: int = 0
    ):
        self.source, self.tokens = source, ChunkTokens(tokenizer, lm_vocab_size)
        self.image_size, self.text_len, self.chunks = image_size, text_len, chunks

    def __call__(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        examples = [example] + [self.source[int(i)] for i in rng.integers(len(self.source), size=self.chunks - 1)]
        kind = caption_texts if rng.random() < 0.5 else question_texts
        chunks, media = [], []
        for e in examples:
            texts = kind(e) or example_texts(e)  # a folder image may have only the other kind
            chunks.append(self.tokens.chunk(texts[rng.integers(len(texts))]))
            media.append(normalize(resize(decode_image(e["image"]), self.image_size)))
        ids, mask = self.tokens.sequence(chunks, self.text_len)
        return {"text_ids": ids, "text_mask": mask, "media": np.stack(media)}


class DocumentTransform:
    """A training row from one `interleaved_folder` document: its first `max_images` images
    (blank images pad the media up to that count; no `<image>` token refers to them)."""

    def __init__(
        self, tokenizer: TextTokenizer, image_size: int, text_len: int, max_images: int, lm_vocab_size: int = 0
    ):
        self.tokens = ChunkTokens(tokenizer, lm_vocab_size)
        self.image_size, self.text_len, self.max_images = image_size, text_len, max_images

    def __call__(self, example: Mapping[str, Any], rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        texts = [as_text(t) for t in example["texts"]]
        images = list(example["images"])[: self.max_images]
        chunks = [self.tokens.tokenizer.encode_plain(texts[0])] + [
            self.tokens.chunk(texts[i + 1]) for i in range(len(images))
        ]
        ids, mask = self.tokens.sequence(chunks, self.text_len)
        media = np.zeros((self.max_images, self.image_size, self.image_size, 3), np.float32)
        for i, data in enumerate(images):
            media[i] = normalize(resize(decode_image(data), self.image_size))
        return {"text_ids": ids, "text_mask": mask, "media": media}


class TextTransform:
    """Decoder-LM pretraining rows: one random caption or answered question, [BOS] text [EOS]."""

    def __init__(self, tokenizer: TextTokenizer, text_len: int):
        self.tokenizer, self.text_len = tokenizer, text_len

    def __call__(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        texts = example_texts(example)
        ids, mask = self.tokenizer([texts[rng.integers(len(texts))]], self.text_len)
        return {"text_ids": ids[0], "text_mask": mask[0]}
