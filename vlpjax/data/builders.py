"""TFDS builders (array_record files) for the embedded shapes data and for user folders.

Images are stored encoded (PNG for shapes, the original bytes for user images) and decoded
by the input pipeline, so building needs neither TensorFlow nor a GPU.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from vlpjax.data import class_folder, documents, folder, shapes, webdataset
from vlpjax.data.images import decode_image, encode_png
from vlpjax.data.tokenizer import TOKENIZER_FILE, as_text, train_wordpiece
from vlpjax.errors import InvalidInput

logger = logging.getLogger(__name__)

TEXT = tfds.features.Text()


def _bytes_feature():
    return tfds.features.Tensor(shape=(), dtype=np.object_)


def _dataset_info(builder: tfds.core.GeneratorBasedBuilder, features: dict) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=builder, description=builder.__doc__, features=tfds.features.FeaturesDict(features)
    )


def _held_out(keys: list, fraction: float, seed: int) -> set:
    """The test split's keys: a seeded sample of round(len(keys) * fraction) of them."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(keys), size=int(round(len(keys) * fraction)), replace=False) if keys else []
    return {keys[i] for i in picked}


def _named_splits(generate: Callable[[list], Iterator], items: list, split_of: Callable[[Any], str]) -> dict:
    """train, val and test, those that have items (TFDS rejects an empty split)."""
    by_split: dict[str, list] = {}
    for item in items:
        by_split.setdefault(split_of(item), []).append(item)
    return {name: generate(members) for name, members in by_split.items()}


def _official_or_held_out(keys: list, official: dict, fraction: float, seed: int) -> Callable[[Any], str]:
    """split_of(key): the official split where one is named, else the seeded random hold-out
    over the keys that name none."""
    held_out = _held_out([k for k in keys if official.get(k) is None], fraction, seed)
    return lambda key: official.get(key) or ("test" if key in held_out else "train")


def _read_file(folder_path: str, relative: str) -> bytes:
    with open(os.path.join(folder_path, relative), "rb") as f:
        return f.read()


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
    image_size: int = 64
    train_size: int = 50_000
    test_size: int = 1_000
    seed: int = 0
    captions_per_image: int = 3


def shapes_config(
    image_size: int = 64, train_size: int = 50_000, test_size: int = 1_000, seed: int = 0
) -> ShapesConfig:
    name = f"px{image_size}_train{train_size}_test{test_size}_seed{seed}"
    return ShapesConfig(name=name, image_size=image_size, train_size=train_size, test_size=test_size, seed=seed)


class SyntheticShapes(tfds.core.GeneratorBasedBuilder):
    """1-3 coloured shapes on a 3x3 grid, with captions, boxes, labels and QA pairs."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS: list = []  # every config is made by shapes_config(); none is registered

    def _info(self) -> tfds.core.DatasetInfo:
        return _dataset_info(
            self,
            {
                "id": np.int64,
                "image": _bytes_feature(),
                "captions": tfds.features.Sequence(TEXT),
                "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                "labels": tfds.features.Tensor(shape=(None,), dtype=np.int64),
                "label": np.int64,
                "questions": tfds.features.Sequence(TEXT),
                "answers": tfds.features.Sequence(TEXT),
            },
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        return {
            "train": self._generate_examples("train", c.train_size),
            "test": self._generate_examples("test", c.test_size),
        }

    def _generate_examples(self, split: str, count: int) -> Iterator[tuple[int, dict]]:
        c = self.builder_config
        rng = np.random.default_rng([c.seed, 0 if split == "train" else 1])
        scenes = (
            shapes.unique_scenes(rng, count) if split == "test" else (shapes.sample_scene(rng) for _ in range(count))
        )
        for i, scene in enumerate(scenes):
            image, boxes = shapes.draw_scene(scene, c.image_size, rng)
            qa = shapes.questions(scene, rng)
            yield (
                i,
                {
                    "id": i,
                    "image": encode_png(image),
                    "captions": shapes.captions(scene, rng, c.captions_per_image),
                    "boxes": boxes,
                    "labels": np.array([o.class_id for o in scene], np.int64),
                    "label": shapes.main_label(scene),
                    "questions": [q for q, _ in qa],
                    "answers": [a for _, a in qa],
                },
            )


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
    folder: str = ""
    manifest: str = "manifest.jsonl"
    max_bad_fraction: float = 0.05
    test_fraction: float = 0.1
    seed: int = 0


def _folder_prefix(path: str, manifest: str, test_fraction: float, seed: int) -> str:
    digest = hashlib.sha1(f"{path}|{manifest}|{test_fraction}|{seed}".encode()).hexdigest()[:10]
    return f"{os.path.basename(path.rstrip('/')) or 'root'}_{digest}"


def folder_config(
    path: str,
    manifest: str = "manifest.jsonl",
    max_bad_fraction: float = 0.05,
    test_fraction: float = 0.1,
    seed: int = 0,
    content: str | None = None,
) -> FolderConfig:
    """`content`: the fingerprint of the manifest and its images (default: read it now). Each
    version of a folder is its own dataset, named <folder>_<settings digest>_<content>."""
    path = os.path.abspath(path)
    content = content or folder.content_fingerprint(path, manifest)
    name = f"{_folder_prefix(path, manifest, test_fraction, seed)}_{content[:8]}"
    return FolderConfig(
        name=name,
        folder=path,
        manifest=manifest,
        max_bad_fraction=max_bad_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )


class ImageTextFolder(tfds.core.GeneratorBasedBuilder):
    """A folder of images with a JSONL manifest of caption rows and/or VQA rows."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [FolderConfig(name="default")]

    def _info(self) -> tfds.core.DatasetInfo:
        return _dataset_info(
            self,
            {
                "id": np.int64,
                "image": _bytes_feature(),
                "image_path": TEXT,
                "captions": tfds.features.Sequence(TEXT),
                "questions": tfds.features.Sequence(TEXT),
                "answer_lists": tfds.features.Sequence(TEXT),  # per question, a JSON list of references
            },
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        if not c.folder:
            raise InvalidInput("image_text_folder needs a folder: use folder_config(path)")
        scan = self.scan_report = folder.scan_manifest(c.folder, c.manifest)
        folder.check_bad_fraction(scan, c.max_bad_fraction)
        grouped = folder.group_by_image(scan.rows)
        official = {group.image: group.split for group in grouped}
        split_of = _official_or_held_out(sorted(official), official, c.test_fraction, c.seed)
        return _named_splits(self._generate_examples, grouped, lambda group: split_of(group.image))

    def _generate_examples(self, groups: list[folder.ImageEntry]) -> Iterator[tuple[str, dict]]:
        for group in groups:
            yield (
                group.image,
                {
                    "id": group.index,
                    "image": _read_file(self.builder_config.folder, group.image),
                    "image_path": group.image,
                    "captions": group.captions,
                    "questions": group.questions,
                    "answer_lists": [json.dumps(a) for a in group.answers],
                },
            )


class InterleavedFolder(tfds.core.GeneratorBasedBuilder):
    """A folder of images with a JSONL file of interleaved documents (see data/documents.py)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [FolderConfig(name="default", manifest=documents.DOCUMENTS_FILE)]

    def _info(self) -> tfds.core.DatasetInfo:
        return _dataset_info(
            self,
            {
                "id": np.int64,
                "images": tfds.features.Sequence(_bytes_feature()),
                "texts": tfds.features.Sequence(TEXT),  # before the first image, then after each image
            },
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        scan = self.scan_report = documents.scan_documents(c.folder, c.manifest)
        folder.check_bad_fraction(scan, c.max_bad_fraction)
        official = {index: doc.split for index, doc in enumerate(scan.rows)}
        split_of = _official_or_held_out(list(official), official, c.test_fraction, c.seed)
        return _named_splits(self._generate_examples, list(enumerate(scan.rows)), lambda doc: split_of(doc[0]))

    def _generate_examples(self, docs) -> Iterator[tuple[int, dict]]:
        for index, doc in docs:
            images = [_read_file(self.builder_config.folder, image) for image in doc.images]
            yield index, {"id": index, "images": images, "texts": doc.texts}


def _listing_fingerprint(root: str) -> str:
    """Every file under `root` with its size and modification time: a new version of the folder
    (an image added, removed or replaced) is a new dataset."""
    digest = hashlib.sha1()
    for folder_path, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            stat = os.stat(os.path.join(folder_path, name))
            digest.update(
                f"{os.path.relpath(os.path.join(folder_path, name), root)}|{stat.st_size}|{stat.st_mtime_ns}".encode()
            )
    return digest.hexdigest()


def class_folder_config(
    path: str, max_bad_fraction: float = 0.05, test_fraction: float = 0.1, seed: int = 0
) -> FolderConfig:
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"image_class_folder {path!r} is not a directory")
    name = f"{_folder_prefix(path, '', test_fraction, seed)}_{_listing_fingerprint(path)[:8]}"
    return FolderConfig(
        name=name, folder=path, manifest="", max_bad_fraction=max_bad_fraction, test_fraction=test_fraction, seed=seed
    )


class ImageClassFolder(tfds.core.GeneratorBasedBuilder):
    """ImageNet-style class sub-folders (data/class_folder.py): images and their class index."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [FolderConfig(name="default")]

    def _info(self) -> tfds.core.DatasetInfo:
        return _dataset_info(self, {"id": np.int64, "image": _bytes_feature(), "image_path": TEXT, "label": np.int64})

    def _split_generators(self, dl_manager):
        c = self.builder_config
        self.classes, scan = class_folder.scan_class_folder(c.folder)
        self.scan_report = scan
        folder.check_bad_fraction(scan, c.max_bad_fraction, unit="images")
        official = {row.image: row.split for row in scan.rows}
        split_of = _official_or_held_out(sorted(official), official, c.test_fraction, c.seed)
        return _named_splits(self._generate_examples, list(enumerate(scan.rows)), lambda row: split_of(row[1].image))

    def _generate_examples(self, rows) -> Iterator[tuple[int, dict]]:
        for index, row in rows:
            image = _read_file(self.builder_config.folder, row.image)
            yield index, {"id": index, "image": image, "image_path": row.image, "label": row.label}


def build_image_class_folder(data_dir: str, path: str, **kwargs) -> tfds.core.DatasetBuilder:
    """Check the images, write the dataset, and leave `bad_rows.jsonl` and `classes.json` (the
    class names, index order) beside it."""
    builder = _array_record(ImageClassFolder, class_folder_config)(data_dir, path=path, **kwargs)
    builder.download_and_prepare()
    classes = getattr(builder, "classes", None) or class_folder.scan_class_folder(path)[0]
    with open(os.path.join(dataset_dir(builder), class_folder.CLASSES_FILE), "w") as f:
        json.dump(class_folder.class_names(classes), f, indent=0)
    report = getattr(builder, "scan_report", None)
    if report is not None:
        folder.write_report(report, os.path.join(dataset_dir(builder), folder.REPORT_FILE))
    return builder


def dataset_classes(builder: tfds.core.DatasetBuilder) -> list[str]:
    """The class names of a built image_class_folder, index order."""
    with open(os.path.join(dataset_dir(builder), class_folder.CLASSES_FILE)) as f:
        return json.load(f)


@dataclasses.dataclass
class WebDatasetConfig(tfds.core.BuilderConfig):
    shards: tuple = ()
    max_bad_fraction: float = 0.05
    test_fraction: float = 0.01
    seed: int = 0


def webdataset_config(
    shards: str, max_bad_fraction: float = 0.05, test_fraction: float = 0.01, seed: int = 0
) -> WebDatasetConfig:
    """The shards `shards` names (brace ranges expanded), checked to exist. Each version of the
    shards (paths, sizes, modification times) and settings is its own dataset."""
    paths = tuple(os.path.abspath(p) for p in webdataset.expand_braces(shards))
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"--shards {shards!r}: {len(missing)} of {len(paths)} shards do not exist, e.g. {missing[0]}"
        )
    stamp = hashlib.sha1(f"{test_fraction}|{seed}".encode())  # the limit on bad samples changes no row
    for path in paths:
        stat = os.stat(path)
        stamp.update(f"|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return WebDatasetConfig(
        name=f"wds_{stamp.hexdigest()[:12]}",
        shards=paths,
        max_bad_fraction=max_bad_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )


def _hashed_split(seed: int, shard: str, key: str, test_fraction: float) -> str:
    """A sample's split from a hash of its name: the same for any shard order and process,
    and nothing to hold in memory."""
    digest = hashlib.sha1(f"{seed}|{os.path.basename(shard)}|{key}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "train"


class WebDataset(tfds.core.GeneratorBasedBuilder):
    """webdataset tar shards of (image, caption) samples, streamed (data/webdataset.py): a first
    pass checks every sample (memory: the bad ones), then each split streams them again. A
    sample's split comes from a hash of its shard and key (`test_fraction` of them in test)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [WebDatasetConfig(name="default")]

    def _info(self) -> tfds.core.DatasetInfo:
        return ImageTextFolder._info(self)  # the same features: the pipeline reads both alike

    def _checked(self) -> Iterator[tuple[int, webdataset.Sample, str | None, str]]:
        """(ordinal, sample, caption or None, problem) over every shard, in order."""
        ordinal = 0
        for shard in self.builder_config.shards:
            for sample in webdataset.shard_samples(shard):
                ordinal += 1
                try:
                    caption = webdataset.caption_of(sample)
                    decode_image(webdataset.image_of(sample))
                except Exception as err:  # noqa: BLE001 - any failure makes the sample bad
                    yield ordinal, sample, None, str(err) or type(err).__name__
                    continue
                yield ordinal, sample, caption, ""

    def _split_of(self, sample: webdataset.Sample) -> str:
        c = self.builder_config
        return _hashed_split(c.seed, sample.shard, sample.key, c.test_fraction)

    def _split_generators(self, dl_manager):
        counts, bad = {}, []
        for ordinal, sample, caption, problem in self._checked():
            if caption is None:
                bad.append(folder.BadRow(ordinal, problem, f"{sample.shard}:{sample.key}"))
            else:
                split = self._split_of(sample)
                counts[split] = counts.get(split, 0) + 1
        self.scan_report = folder.ScanReport(range(sum(counts.values())), bad)  # a count, not the rows
        folder.check_bad_fraction(self.scan_report, self.builder_config.max_bad_fraction, unit="samples")
        return {split: self._generate_examples(split) for split in sorted(counts)}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
        for ordinal, sample, caption, _ in self._checked():
            if caption is not None and self._split_of(sample) == split:
                yield (
                    ordinal,
                    {
                        "id": ordinal,
                        "image": webdataset.image_of(sample),
                        "image_path": f"{os.path.basename(sample.shard)}:{sample.key}",
                        "captions": [caption],
                        "questions": [],
                        "answer_lists": [],
                    },
                )


def build_webdataset(data_dir: str, shards: str, **kwargs) -> tfds.core.DatasetBuilder:
    """Check and write the shards' samples; `bad_rows.jsonl` beside the dataset lists the bad ones."""
    builder = _array_record(WebDataset, webdataset_config)(data_dir, shards=shards, **kwargs)
    builder.download_and_prepare()
    report = getattr(builder, "scan_report", None)
    if report is not None:
        folder.write_report(report, os.path.join(dataset_dir(builder), folder.REPORT_FILE))
    return builder


# --- entry points used by `vlpjax data build` ---------------------------------------------


def dataset_dir(builder: tfds.core.DatasetBuilder) -> str:
    return os.fspath(builder.data_path)


def build_synthetic_shapes(data_dir: str, **kwargs) -> tfds.core.DatasetBuilder:
    """Build (or reuse) the shapes dataset and its WordPiece tokenizer; returns the builder."""
    builder = _array_record(SyntheticShapes, shapes_config)(data_dir, **kwargs)
    builder.download_and_prepare()
    tokenizer_path = os.path.join(dataset_dir(builder), TOKENIZER_FILE)
    if not os.path.exists(tokenizer_path):
        source = builder.as_data_source(split="train")
        texts = (as_text(c) for i in range(len(source)) for c in source[i]["captions"])
        # Questions and their answers too: generated answers ("zero", ...) must be words, not [UNK].
        extra = (
            as_text(t) for i in range(min(len(source), 5000)) for t in [*source[i]["questions"], *source[i]["answers"]]
        )
        train_wordpiece(texts, extra, path=tokenizer_path)
    return builder


FOLDER_BUILDERS = {"image_text_folder": ImageTextFolder, "interleaved_folder": InterleavedFolder}


def _folder_builder(kind: str, data_dir: str, **kwargs) -> tfds.core.DatasetBuilder:
    if kind == "interleaved_folder":
        kwargs.setdefault("manifest", documents.DOCUMENTS_FILE)
    return FOLDER_BUILDERS[kind](data_dir=data_dir, config=folder_config(**kwargs), file_format="array_record")


def _built_folder(kind: str, data_dir: str, **kwargs) -> tfds.core.DatasetBuilder:
    """The build of the folder as it is now; where its manifest cannot be read any more, the
    newest build there is (with a warning), so an archived run still evaluates."""
    if kind == "interleaved_folder":
        kwargs.setdefault("manifest", documents.DOCUMENTS_FILE)
    builder = _folder_builder(kind, data_dir, **kwargs)
    if not builder.builder_config.name.endswith("_" + folder.UNREADABLE[:8]):
        return builder
    newest = _newest_build_of(kind, data_dir, **kwargs)
    if newest is None:
        return builder  # reported as not built
    logger.warning("cannot read the manifest of %s; using its newest build, %s", kwargs["path"], dataset_dir(newest))
    return newest


def _newest_build_of(kind: str, data_dir: str, **kwargs) -> tfds.core.DatasetBuilder | None:
    """The most recently built version of a folder dataset whose folder can no longer be read
    (moved, unmounted, archived without it), or None."""
    config = folder_config(content="-", **kwargs)
    prefix = config.name[: -len("-")]
    root = os.path.join(data_dir, FOLDER_BUILDERS[kind].name)
    built = sorted(
        glob.glob(os.path.join(root, prefix + "*", "*", "dataset_info.json")), key=os.path.getmtime, reverse=True
    )
    if not built:
        return None
    content = os.path.basename(os.path.dirname(os.path.dirname(built[0])))[len(prefix) :]
    return _folder_builder(kind, data_dir, content=content, **kwargs)


def build_image_text_folder(
    data_dir: str, path: str, kind: str = "image_text_folder", **kwargs
) -> tfds.core.DatasetBuilder:
    """Validate the manifest (or documents file), write the dataset, and leave
    `bad_rows.jsonl` beside it."""
    builder = _folder_builder(kind, data_dir, path=path, **kwargs)
    try:
        builder.download_and_prepare()
    except folder.TooManyBadRows as err:
        # No dataset directory exists: the full report goes beside where it would have been.
        report_path = os.path.join(data_dir, f"{builder.builder_config.name}.{folder.REPORT_FILE}")
        if getattr(builder, "scan_report", None) is not None:
            folder.write_report(builder.scan_report, report_path)
            raise folder.TooManyBadRows(f"{err} All bad rows are listed in {report_path}") from None
        raise
    report = getattr(builder, "scan_report", None)
    if report is not None:
        folder.write_report(report, os.path.join(dataset_dir(builder), folder.REPORT_FILE))
    return builder


def load_builder(name: str, data_dir: str, **kwargs) -> tfds.core.DatasetBuilder:
    """An already-built dataset, with a clear message when it is not there."""
    builder = dataset_kind(name).builder(data_dir, **kwargs)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"dataset {name} ({builder.builder_config.name}) is not built in {data_dir!r}: "
            f"run `vlpjax data build {name} ...` first"
        )
    return builder


# --- the datasets a config can name (data.name) ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetKind:
    """What the trainer needs to know of a dataset, so that it never asks for one by name."""

    builder: Callable[..., tfds.core.DatasetBuilder]  # (data_dir, **fields) -> the builder
    fields: Callable[[Any], dict]  # the data config -> those fields
    flip_swaps_words: bool = False  # captions name left and right (shapes): a flip swaps them
    documents: bool = False  # rows are interleaved documents (Flamingo), not image-text pairs
    filter_empty: bool = False  # rows may hold questions and no caption: image-text batches skip them
    shapes_labels: bool = False  # captions in the shapes grammar: generated ones are parsed back
    image_text: bool = True  # False: labelled images for zero-shot evaluation, nothing to train on
    class_names: Callable[[tfds.core.DatasetBuilder], list[str]] | None = None  # rows' `label` -> name
    boxes: bool = False  # every row holds its objects' boxes (a detector trains on them)


def _folder_fields(kind: str) -> Callable[[Any], dict]:
    def fields(data) -> dict:
        if not data.folder:
            raise InvalidInput(f"data.folder must name the image folder for {kind}")
        return dict(path=data.folder, seed=data.get("split_seed", 0))

    return fields


def _shards_field(data) -> dict:
    if not data.get("shards"):
        raise InvalidInput("data.shards must name the webdataset shards, e.g. 'shards/{00000..00099}.tar'")
    return dict(shards=data.shards, seed=data.get("split_seed", 0))


def _array_record(builder_class, config_fn) -> Callable[..., tfds.core.DatasetBuilder]:
    return lambda data_dir, **kw: builder_class(data_dir=data_dir, config=config_fn(**kw), file_format="array_record")


DATASETS = {
    "synthetic_shapes": DatasetKind(
        _array_record(SyntheticShapes, shapes_config),
        lambda data: dict(image_size=data.image_size, train_size=data.train_size, test_size=data.test_size),
        flip_swaps_words=True,
        shapes_labels=True,
        class_names=lambda builder: list(shapes.CLASS_NAMES),
        boxes=True,
    ),
    "image_text_folder": DatasetKind(
        lambda data_dir, **kw: _built_folder("image_text_folder", data_dir, **kw),
        _folder_fields("image_text_folder"),
        filter_empty=True,
    ),
    "interleaved_folder": DatasetKind(
        lambda data_dir, **kw: _built_folder("interleaved_folder", data_dir, **kw),
        _folder_fields("interleaved_folder"),
        documents=True,
    ),
    "image_class_folder": DatasetKind(
        _array_record(ImageClassFolder, class_folder_config),
        _folder_fields("image_class_folder"),
        image_text=False,
        class_names=dataset_classes,
    ),
    "webdataset": DatasetKind(
        _array_record(WebDataset, webdataset_config),
        _shards_field,
    ),
}


def dataset_kind(name: str) -> DatasetKind:
    if name not in DATASETS:
        raise InvalidInput(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def load_dataset(data) -> tfds.core.DatasetBuilder:
    """The built dataset a config's `data` section names."""
    kind = dataset_kind(data.name)
    return load_builder(data.name, data.data_dir, **kind.fields(data))
