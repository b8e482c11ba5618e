"""The grain input pipeline: shard per process, shuffle, decode, augment, tokenize, batch.

Each example is a pure function of (seed, index), so the same seed gives the same batches,
and the iterator's state (a small dict) resumes a run exactly; it is saved with checkpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from vlpjax.data.answers import answer_vocabulary, normalize_answer, target_scores
from vlpjax.data.fields import question_rows
from vlpjax.data.images import decode_image, model_pixels, normalize, resize
from vlpjax.data.interleaved import DocumentTransform, InterleavedTransform, TextTransform
from vlpjax.data.question_answer import question_answer_ids
from vlpjax.data.regions import flip_boxes, region_arrays
from vlpjax.data.shapes import swap_left_right
from vlpjax.data.tokenizer import TextTokenizer, as_text
from vlpjax.errors import InvalidInput
from vlpjax.taxonomy import TASKS, check_choice


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    batch_size: int  # per process
    image_size: int
    text_len: int
    seed: int = 0
    crop_scale: tuple[float, float] = (1.0, 1.0)  # random resized crop area range; (1, 1) is off
    flip: bool = False  # horizontal flip; shapes captions swap left/right with it
    flip_swaps_words: bool = True
    task: str = "image_text"  # "vqa": (image, question, answer scores) rows; "question_answer":
    # (image, question + answer text) rows; "detection": (image, its boxes); "interleaved": Flamingo
    # sequences of `chunks` images with their texts; "text": captions and QA as plain text
    chunks: int = 2
    lm_vocab_size: int = 0  # interleaved: the LM's vocabulary size (0: the tokenizer's)
    documents: bool = False  # interleaved_folder: rows are documents, `chunks` caps their images
    region_grid: int = 0  # > 0: region features pooled from each example's boxes (see data/regions.py)
    max_regions: int = 3
    box_classes: int = 0  # > 0: a detector's box head names this many classes; every box needs one
    threads: int = 2
    prefetch: int = 4

    def __post_init__(self):
        check_choice("data.task", self.task, TASKS)
        if self.documents and self.task != "interleaved":
            raise InvalidInput(
                f"interleaved_folder documents train Flamingo (data.task='interleaved'), not data.task={self.task!r}"
            )
        if self.task == "detection" and self.crop_scale != (1.0, 1.0):
            raise InvalidInput("a detector's boxes need data.crop_scale=(1.0, 1.0): a crop would move them")
        if self.region_grid and self.crop_scale != (1.0, 1.0):
            raise InvalidInput(
                "region features from boxes need data.crop_scale=(1.0, 1.0): a crop would move the boxes"
            )


def random_resized_crop(
    image: np.ndarray, rng: np.random.Generator, scale: tuple[float, float], out_size: int
) -> np.ndarray:
    h, w = image.shape[:2]
    if scale != (1.0, 1.0):
        area = rng.uniform(*scale) * h * w
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(round(min(h, np.sqrt(area / ratio))))
        cw = int(round(min(w, np.sqrt(area * ratio))))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        image = image[top : top + ch, left : left + cw]
    return resize(image, out_size)


# Tasks whose rows are an image's questions: classified answers (vqa) or generated ones.
QUESTION_TASKS = ("vqa", "question_answer")
ANSWERED = "answered questions"
# What an example needs for a task's training rows (filter_empty datasets drop the rest).
NEEDED_FIELD = {"image_text": "captions", "vqa": "questions", "question_answer": ANSWERED}


class TrainTransform:
    """Decode, augment and tokenize one example; its randomness comes from grain's per-index rng.

    image_text: a random caption of the image. vqa: a random question of the image, with the
    soft scores of its answers over `answers` (the answer vocabulary). question_answer: a random
    question and one of its answers as one text (data/question_answer.py).
    """

    def __init__(self, config: PipelineConfig, tokenizer: TextTokenizer, answers: Sequence[str] = ()):
        if config.task == "vqa" and not answers:
            raise InvalidInput("VQA training needs an answer vocabulary")
        self.config = config
        self.tokenizer = tokenizer
        self.answers = {a: i for i, a in enumerate(answers)}

    def __call__(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        c = self.config
        image = random_resized_crop(decode_image(example["image"]), rng, c.crop_scale, c.image_size)
        flipped = c.flip and rng.random() < 0.5
        if flipped:
            image = image[:, ::-1]
        out = {"image": normalize(image), "image_id": np.int64(example["id"])}
        if c.region_grid:
            boxes = np.asarray(example["boxes"], np.float32).reshape(-1, 4)
            out.update(
                region_arrays(out["image"], flip_boxes(boxes) if flipped else boxes, c.region_grid, c.max_regions)
            )
        if c.task == "detection":
            boxes = flip_boxes(boxes_of(example)) if flipped else boxes_of(example)
            labels = box_labels_of(example, len(boxes))
            check_box_labels(labels, c.box_classes)
            out.update(box_targets(boxes, labels, c.max_regions))
            return out
        if c.task in QUESTION_TASKS:
            rows = answered_questions(example) if c.task == "question_answer" else question_rows(example)
            question, references = rows[rng.integers(len(rows))]
            if flipped and c.flip_swaps_words:
                question, references = swap_left_right(question), [swap_left_right(a) for a in references]
            out.update(self._question_fields(question, references, rng))
            return out
        captions = [as_text(t) for t in example["captions"]]
        caption = captions[rng.integers(len(captions))]
        if flipped and c.flip_swaps_words:
            caption = swap_left_right(caption)
        ids, mask = self.tokenizer([caption], c.text_len)
        out.update(text_ids=ids[0], text_mask=mask[0])
        return out

    def _question_fields(self, question: str, references: Sequence[str], rng: np.random.Generator) -> dict:
        c = self.config
        if c.task == "vqa":
            ids, mask = self.tokenizer([question], c.text_len)
            return dict(
                question_ids=ids[0], question_mask=mask[0], answer_scores=target_scores(references, self.answers)
            )
        # question_answer: one reference drawn at random, so answers are learned in proportion
        # to how many annotators gave them (the VQA score's weighting).
        answer = normalize_answer(references[rng.integers(len(references))])
        ids, mask, prefix_len = question_answer_ids(self.tokenizer, question, answer, c.text_len)
        return dict(text_ids=ids, text_mask=mask, prefix_len=np.int32(prefix_len))


def boxes_of(example) -> np.ndarray:
    return np.asarray(example["boxes"], np.float32).reshape(-1, 4)


def box_labels_of(example, count: int) -> np.ndarray:
    """Each box's object class (synthetic_shapes: colour x shape); -1 where the data has none."""
    if "labels" not in example:
        return np.full(count, -1, np.int32)
    labels = np.asarray(example["labels"], np.int32).reshape(-1)
    if len(labels) != count:
        raise InvalidInput(f"an example has {count} boxes but {len(labels)} labels")
    return labels


def check_box_labels(labels: np.ndarray, classes: int) -> None:
    """A box head's targets: every box of a known class, inside 0..classes-1."""
    if not classes:
        return
    if (labels < 0).any():
        raise InvalidInput("a detector's box head needs each box's class: the dataset's rows have no `labels`")
    if (labels >= classes).any():
        raise InvalidInput(f"a box has class {int(labels.max())}, outside model.detector.num_classes={classes}")


def box_targets(boxes: np.ndarray, labels: np.ndarray, max_boxes: int) -> dict[str, np.ndarray]:
    """A detector's targets: `gt_boxes` [max_boxes, 4] (normalised), `gt_mask` [max_boxes] and
    `gt_labels` [max_boxes] (-1: padding or unknown)."""
    if len(boxes) > max_boxes:
        raise InvalidInput(f"an image has {len(boxes)} boxes, more than data.max_regions={max_boxes}")
    padded, mask = np.zeros((max_boxes, 4), np.float32), np.zeros(max_boxes, bool)
    padded_labels = np.full(max_boxes, -1, np.int32)
    padded[: len(boxes)], mask[: len(boxes)], padded_labels[: len(boxes)] = boxes, True, labels
    return {"gt_boxes": padded, "gt_mask": mask, "gt_labels": padded_labels}


def answered_questions(example) -> list:
    """The (question, references) rows with at least one reference: what generated VQA learns."""
    return [row for row in question_rows(example) if row[1]]


class NonEmptySubset:
    """The examples of a source whose `field` is not empty (user folders may mix caption-only
    and VQA-only images, and questions without answers)."""

    def __init__(self, source, field: str):
        self.source = source
        keep = (lambda e: bool(answered_questions(e))) if field == ANSWERED else (lambda e: len(e[field]) > 0)
        self.indices = [i for i in range(len(source)) if keep(source[i])]
        if not self.indices:
            raise InvalidInput(f"no example has any {field}")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.source[self.indices[index]]


def train_transform(source, tokenizer: TextTokenizer, config: PipelineConfig, answers: Sequence[str] = ()):
    if config.documents:
        return DocumentTransform(tokenizer, config.image_size, config.text_len, config.chunks, config.lm_vocab_size)
    if config.task == "interleaved":
        return InterleavedTransform(
            source, tokenizer, config.image_size, config.text_len, config.chunks, config.lm_vocab_size
        )
    if config.task == "text":
        return TextTransform(tokenizer, config.text_len)
    return TrainTransform(config, tokenizer, answers)


def train_dataset(
    source,
    tokenizer: TextTokenizer,
    config: PipelineConfig,
    process_index: int = 0,
    process_count: int = 1,
    *,
    filter_empty: bool = False,
    answers: Sequence[str] = (),
) -> grain.MapDataset:
    """An endless MapDataset of batches: element k is the k-th batch of this process.

    `filter_empty` drops examples without captions (image_text), questions (vqa) or answered
    questions (question_answer) first.
    """
    if config.flip and not config.flip_swaps_words:
        raise InvalidInput(
            "a horizontal flip changes the meaning of left/right words: turn flip off or let it swap words"
        )
    if filter_empty and config.task in ("image_text", *QUESTION_TASKS):  # interleaved / text rows take either
        source = NonEmptySubset(source, NEEDED_FIELD[config.task])
    ds = grain.MapDataset.source(source)
    global_batch = config.batch_size * process_count
    if len(ds) < global_batch:
        raise InvalidInput(f"the training split has {len(ds)} examples, fewer than one batch of {global_batch}")
    # Shuffling and augmentation follow the global example index, and each process then takes its
    # rows of every global batch: the global batch is the same for any number of processes.
    ds = (
        ds.shuffle(seed=config.seed)
        .random_map(train_transform(source, tokenizer, config, answers), seed=config.seed)
        .repeat(None)
    )
    if process_count > 1:
        ds = ProcessRows(ds, config.batch_size, process_count, process_index)
    return ds.batch(config.batch_size, drop_remainder=True)


class ProcessRows(grain.MapDataset):
    """Process p's rows of each global batch of a stream: local element j is global element
    (j // b) * b * P + p * b + j % b, with b rows per process and P processes."""

    def __init__(self, parent: grain.MapDataset, rows_per_process: int, process_count: int, process_index: int):
        super().__init__(parent)
        self._rows, self._count, self._index = rows_per_process, process_count, process_index

    def __len__(self) -> int:
        return len(self._parent) // self._count

    def _global_index(self, j: int) -> int:
        batch, row = divmod(j, self._rows)
        return batch * self._rows * self._count + self._index * self._rows + row

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self._global_index(index)]

    def __str__(self) -> str:
        return f"ProcessRows(process {self._index} of {self._count}, {self._rows} rows per batch)"


def train_iterator(
    source,
    tokenizer: TextTokenizer,
    config: PipelineConfig,
    process_index: int = 0,
    process_count: int = 1,
    *,
    filter_empty: bool = False,
    answers: Sequence[str] = (),
):
    """A checkpointable iterator (get_state / set_state) with background prefetch threads."""
    ds = train_dataset(
        source, tokenizer, config, process_index, process_count, filter_empty=filter_empty, answers=answers
    )
    options = grain.ReadOptions(num_threads=config.threads, prefetch_buffer_size=config.prefetch)
    return iter(ds.to_iter_dataset(options))


def image_arrays(examples, config: PipelineConfig) -> dict[str, np.ndarray]:
    images = np.stack([model_pixels(e["image"], config.image_size) for e in examples])
    out = {"image": images}
    if config.region_grid:
        rows = [
            region_arrays(img, e["boxes"], config.region_grid, config.max_regions)
            for img, e in zip(images, examples, strict=True)
        ]
        out.update({k: np.stack([r[k] for r in rows]) for k in rows[0]})
    return out


def training_answers(source, max_answers: int | None = None) -> list[str]:
    """The answer vocabulary of a training split: its most frequent answers."""
    return answer_vocabulary((refs for i in range(len(source)) for _, refs in question_rows(source[i])), max_answers)
