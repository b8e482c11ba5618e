"""The grain input pipeline: shard per process, shuffle, decode, augment, tokenize, batch.

Each example is a pure function of (seed, index), so the same seed gives the same batches,
and the iterator's state (a small dict) resumes a run exactly; it is saved with checkpoints.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import grain
import numpy as np
from PIL import Image

from vlpjax.data.images import decode_image
from vlpjax.data.shapes import swap_left_right
from vlpjax.data.tokenizer import TextTokenizer, as_text


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    batch_size: int  # per process
    image_size: int
    text_len: int
    seed: int = 0
    crop_scale: tuple[float, float] = (1.0, 1.0)  # random resized crop area range; (1, 1) is off
    flip: bool = False  # horizontal flip; shapes captions swap left/right with it
    flip_swaps_words: bool = True
    threads: int = 2
    prefetch: int = 4


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1]."""
    return image.astype(np.float32) / 127.5 - 1.0


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, scale: tuple[float, float], out_size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if scale != (1.0, 1.0):
        area = rng.uniform(*scale) * h * w
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(round(min(h, np.sqrt(area / ratio))))
        cw = int(round(min(w, np.sqrt(area * ratio))))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        image = image[top : top + ch, left : left + cw]
    return resize(image, out_size)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


class TrainTransform:
    """Decode, augment and tokenize one example; its randomness comes from grain's per-index rng."""

    def __init__(self, config: PipelineConfig, tokenizer: TextTokenizer):
        self.config = config
        self.tokenizer = tokenizer

    def __call__(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        c = self.config
        image = random_resized_crop(decode_image(example["image"]), rng, c.crop_scale, c.image_size)
        captions = [as_text(t) for t in example["captions"]]
        caption = captions[rng.integers(len(captions))]
        if c.flip and rng.random() < 0.5:
            image = image[:, ::-1]
            if c.flip_swaps_words:
                caption = swap_left_right(caption)
        ids, mask = self.tokenizer([caption], c.text_len)
        return {
            "image": normalize(image),
            "text_ids": ids[0],
            "text_mask": mask[0],
            "image_id": np.int64(example["id"]),
        }


class CaptionedSubset:
    """The examples of a source that have at least one caption (user folders may hold VQA-only images)."""

    def __init__(self, source):
        self.source = source
        self.indices = [i for i in range(len(source)) if len(source[i]["captions"])]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.source[self.indices[index]]


def train_dataset(source, tokenizer: TextTokenizer, config: PipelineConfig, process_index: int = 0, process_count: int = 1, *, captioned_only: bool = False) -> grain.MapDataset:
    """An endless MapDataset of batches: element k is the k-th batch of this process."""
    if config.flip and not config.flip_swaps_words:
        raise ValueError("a horizontal flip changes the meaning of left/right captions: turn flip off or let it swap words")
    if captioned_only:
        source = CaptionedSubset(source)
    ds = grain.MapDataset.source(source)[process_index::process_count]
    if len(ds) < config.batch_size:
        raise ValueError(f"this process's shard has {len(ds)} examples, fewer than one batch of {config.batch_size}")
    ds = ds.shuffle(seed=config.seed).random_map(TrainTransform(config, tokenizer), seed=config.seed).repeat(None)
    return ds.batch(config.batch_size, drop_remainder=True)


def train_iterator(source, tokenizer: TextTokenizer, config: PipelineConfig, process_index: int = 0, process_count: int = 1, *, captioned_only: bool = False):
    """A checkpointable iterator (get_state / set_state) with background prefetch threads."""
    ds = train_dataset(source, tokenizer, config, process_index, process_count, captioned_only=captioned_only)
    options = grain.ReadOptions(num_threads=config.threads, prefetch_buffer_size=config.prefetch)
    return iter(ds.to_iter_dataset(options))


def eval_arrays(source, tokenizer: TextTokenizer, image_size: int, text_len: int, limit: int | None = None) -> dict[str, np.ndarray]:
    """The whole (small) test split in memory: images, first captions, all captions, labels."""
    count = len(source) if limit is None else min(limit, len(source))
    examples = [e for e in (source[i] for i in range(count)) if len(e["captions"])]
    if not examples:
        raise ValueError("the test split has no captioned examples to evaluate retrieval on")
    images = np.stack([normalize(resize(decode_image(e["image"]), image_size)) for e in examples])
    first = [as_text(e["captions"][0]) for e in examples]
    ids, mask = tokenizer(first, text_len)
    out = {"image": images, "text_ids": ids, "text_mask": mask, "captions": np.array(first, dtype=object)}
    if "label" in examples[0]:
        out["label"] = np.array([int(e["label"]) for e in examples], np.int64)
        out["object_count"] = np.array([len(e["labels"]) for e in examples], np.int64)
    return out
