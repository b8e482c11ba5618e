"""Validation of an `image_text_folder`: a folder of images plus a JSONL manifest.

Manifest rows (one JSON object a line, paths relative to the folder):

    {"image": "cats/1.jpg", "captions": ["a cat on a mat", "a sleeping cat"]}
    {"image": "cats/1.jpg", "question": "what animal is this?", "answers": ["cat", "cat", "kitten"]}
    {"image": "dogs/7.jpg", "captions": ["a dog"], "split": "test"}

A row may name its split (train, val or test: an official split such as Karpathy's); all rows of
an image must agree. Images whose rows name none are split at random (data build's test
fraction).

A row is bad when its JSON does not parse, its image is missing, cannot be decoded or lies
outside the folder, or a caption / question / answer list is empty. Bad rows are skipped,
counted and listed in a report; too many of them stop the build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable

from vlpjax.data.images import decode_image
from vlpjax.errors import UserError

REPORT_FILE = "bad_rows.jsonl"
UNREADABLE = "unreadable"  # the fingerprint of a manifest that cannot be read (a moved or archived folder)


class TooManyBadRows(UserError, ValueError):
    """More rows are bad than data.max_bad_fraction allows."""


SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class Row:
    line: int
    image: str
    captions: list[str]
    question: str | None = None
    answers: list[str] | None = None
    split: str | None = None  # an official split; None: the random hold-out decides


@dataclasses.dataclass
class BadRow:
    line: int
    reason: str
    image: str | None = None


@dataclasses.dataclass
class ScanReport:
    rows: list  # Row, or documents.Document
    bad: list[BadRow]

    @property
    def total(self) -> int:
        return len(self.rows) + len(self.bad)

    @property
    def bad_fraction(self) -> float:
        return len(self.bad) / max(self.total, 1)


@dataclasses.dataclass
class ImageEntry:
    index: int
    image: str
    captions: list[str]
    questions: list[str]
    answers: list[list[str]]
    split: str | None = None


def _inside(root: str, relative: str) -> bool:
    root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(root, relative))
    return os.path.isabs(relative) is False and os.path.commonpath([root, target]) == root


def _strings(value, field: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"'{field}' must be a non-empty list of strings")
    cleaned = [v.strip() for v in value if isinstance(v, str)]
    if len(cleaned) != len(value) or not all(cleaned):
        raise ValueError(f"'{field}' holds an empty or non-string entry")
    return cleaned


def check_image(root: str, image: str, decodable: dict[str, bool]) -> None:
    """Raise ValueError unless `image` is a decodable file inside `root` (results cached)."""
    if not _inside(root, image):
        raise ValueError("image path leaves the folder")
    path = os.path.join(root, image)
    if not os.path.isfile(path):
        raise ValueError("image file is missing")
    if image not in decodable:
        try:
            with open(path, "rb") as f:
                decode_image(f.read())
            decodable[image] = True
        except Exception:  # noqa: BLE001 - any decoder failure makes the row bad
            decodable[image] = False
    if not decodable[image]:
        raise ValueError("image cannot be decoded")


def row_split(record: dict) -> str | None:
    """The row's official split, if it names one."""
    split = record.get("split")
    if split is not None and split not in SPLITS:
        raise ValueError(f"'split' must be one of {SPLITS}, got {split!r}")
    return split


def _parse(line_no: int, text: str, root: str, decodable: dict[str, bool]) -> Row:
    record = json.loads(text)
    if not isinstance(record, dict) or not isinstance(record.get("image"), str):
        raise ValueError("row needs an 'image' path")
    image = record["image"]
    split = row_split(record)
    check_image(root, image, decodable)
    if "question" in record:
        question = record["question"]
        if not isinstance(question, str) or not question.strip():
            raise ValueError("empty question")
        return Row(line_no, image, [], question.strip(), _strings(record.get("answers"), "answers"), split)
    return Row(line_no, image, _strings(record.get("captions"), "captions"), split=split)


def _image_field(text: str) -> str | None:
    """The row's image path, where its JSON parses far enough to name one (for the report)."""
    try:
        image = json.loads(text).get("image")
    except Exception:  # noqa: BLE001 - the reason already says the JSON is bad
        return None
    return image if isinstance(image, str) else None


def scan_jsonl(
    root: str,
    file: str,
    what: str,
    parse: Callable[[int, str, str, dict[str, bool]], Any],
    bad_image: Callable[[str], str | None] = lambda text: None,
) -> ScanReport:
    """Parse every non-empty line of the JSONL `file` (relative to `root` unless absolute) with
    `parse(line_no, text, root, decodable)`; a line it rejects with ValueError becomes a BadRow
    whose image is `bad_image(text)`. `what` names the file in the error when it is missing."""
    path = file if os.path.isabs(file) else os.path.join(root, file)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    good, bad, decodable = [], [], {}
    with open(path, "rb") as f:  # bytes: one undecodable line is one bad row, not a failed build
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad.append(BadRow(line_no, f"line is not valid UTF-8 (byte {err.start})"))
                continue
            if not text.strip():
                continue
            try:
                good.append(parse(line_no, text, root, decodable))
            except (ValueError, json.JSONDecodeError) as err:
                bad.append(BadRow(line_no, str(err), bad_image(text)))
    return ScanReport(good, bad)


def _named_images(record) -> list[str]:
    """The image paths a manifest row or a document names, as far as its JSON shows them."""
    if not isinstance(record, dict):
        return []
    names = [record["image"]] if isinstance(record.get("image"), str) else []
    chunks = record.get("chunks")
    if isinstance(chunks, list):
        names += [c["image"] for c in chunks if isinstance(c, dict) and isinstance(c.get("image"), str)]
    return names


def _file_stamp(root: str, relative: str) -> str:
    try:
        stat = os.stat(os.path.join(root, relative))
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def content_fingerprint(root: str, file: str) -> str:
    """A digest of the JSONL file's bytes and of the size and mtime of every image it names, so
    a dataset built from an earlier version of either is not mistaken for this one."""
    path = file if os.path.isabs(file) else os.path.join(root, file)
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return UNREADABLE
    digest.update(data)
    for raw in data.splitlines():
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        for image in _named_images(record):
            digest.update(f"\n{image}\0{_file_stamp(root, image)}".encode())
    return digest.hexdigest()[:16]


def scan_manifest(root: str, manifest: str = "manifest.jsonl") -> ScanReport:
    return scan_jsonl(root, manifest, "manifest", _parse, bad_image=_image_field)


def check_bad_fraction(report: ScanReport, limit: float, unit: str = "manifest rows") -> None:
    if report.total == 0:
        raise TooManyBadRows(f"there are no {unit}")
    if report.bad_fraction > limit:
        examples = "; ".join(
            f"{'line' if unit == 'manifest rows' else 'sample'} {b.line}: {b.reason}" for b in report.bad[:5]
        )
        raise TooManyBadRows(
            f"{len(report.bad)} of {report.total} {unit} are bad ({report.bad_fraction:.1%}), "
            f"over the limit of {limit:.1%} (max_bad_fraction). First ones: {examples}"
        )


class SplitConflict(UserError, ValueError):
    """The rows of one image name different splits."""


def group_by_image(rows: list[Row]) -> list[ImageEntry]:
    """One entry per image, holding all its captions and questions, in first-seen order."""
    entries: dict[str, ImageEntry] = {}
    first_line: dict[str, int] = {}
    for row in rows:
        entry = entries.setdefault(row.image, ImageEntry(len(entries), row.image, [], [], [], row.split))
        first = first_line.setdefault(row.image, row.line)
        if row.split != entry.split:
            raise SplitConflict(
                f"image {row.image!r} is in split {entry.split!r} on manifest line {first} "
                f"and {row.split!r} on line {row.line}: all rows of an image must name the same split"
            )
        entry.captions.extend(row.captions)
        if row.question is not None:
            entry.questions.append(row.question)
            entry.answers.append(row.answers or [])
    return list(entries.values())


def write_report(report: ScanReport, path: str) -> None:
    with open(path, "w") as f:
        f.write(json.dumps({"rows": report.total, "good": len(report.rows), "bad": len(report.bad)}) + "\n")
        for b in report.bad:
            f.write(json.dumps(dataclasses.asdict(b)) + "\n")
