"""Reading webdataset tar shards (the LAION / DataComp format) one sample at a time.

A shard is a tar file whose members are grouped into samples by key: the member's path up to
the first dot of its file name (`0001234.jpg`, `0001234.txt`, `0001234.json` are one sample).
A sample needs an image (jpg, jpeg, png or webp) and a caption: a `.txt` file, or a `.json`
file with a "caption" or "text" string (or a "captions" list). Members are read as the tar
streams past, so memory holds one sample, never a shard.

Shard patterns expand brace ranges as webdataset does: `shards/{00000..00099}.tar` names 100
files (zero padding kept), `{a,b}` alternatives.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import tarfile
from typing import Iterator

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_BRACES = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """'d/{000..002}.tar' -> ['d/000.tar', 'd/001.tar', 'd/002.tar']; '{a,b}' -> a, b."""
    parts, choices, position = [], [], 0
    for match in _BRACES.finditer(pattern):
        parts.append(pattern[position : match.start()])
        choices.append(_brace_choices(match.group(1), pattern))
        position = match.end()
    parts.append(pattern[position:])
    out = []
    for combination in itertools.product(*choices):
        out.append("".join(p + c for p, c in zip(parts, [*combination, ""], strict=True)))
    return out


def _brace_choices(body: str, pattern: str) -> list[str]:
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        first, last = numeric.groups()
        if int(last) < int(first):
            raise ValueError(f"shard pattern {pattern!r}: range {{{body}}} counts down")
        width = len(first)
        return [str(i).zfill(width) for i in range(int(first), int(last) + 1)]
    if "," in body:
        return body.split(",")
    raise ValueError(f"shard pattern {pattern!r}: {{{body}}} is neither a range a..b nor a list a,b")


@dataclasses.dataclass
class Sample:
    shard: str
    key: str
    files: dict[str, bytes]  # extension (lower case) -> bytes


def _split_name(name: str) -> tuple[str, str]:
    folder, base = os.path.split(name)
    stem, _, extension = base.partition(".")
    return os.path.join(folder, stem), extension.lower()


def shard_samples(path: str) -> Iterator[Sample]:
    """The samples of one shard, in tar order; members stream past, one sample is held."""
    current: Sample | None = None
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, extension = _split_name(member.name)
            if current is not None and key != current.key:
                yield current
                current = None
            if current is None:
                current = Sample(path, key, {})
            current.files[extension] = tar.extractfile(member).read()
    if current is not None:
        yield current


def caption_of(sample: Sample) -> str:
    """The sample's caption; ValueError (the reason) where it has none."""
    if "txt" in sample.files:
        text = sample.files["txt"].decode("utf-8").strip()
    elif "json" in sample.files:
        record = json.loads(sample.files["json"])
        if not isinstance(record, dict):
            raise ValueError("its .json is not an object")
        text = record.get("caption") or record.get("text") or ""
        if not text and isinstance(record.get("captions"), list) and record["captions"]:
            text = record["captions"][0]
        text = text.strip() if isinstance(text, str) else ""
    else:
        raise ValueError("no .txt or .json caption")
    if not text:
        raise ValueError("empty caption")
    return text


def image_of(sample: Sample) -> bytes:
    for extension in IMAGE_EXTENSIONS:
        if extension in sample.files:
            return sample.files[extension]
    raise ValueError(f"no image ({', '.join(IMAGE_EXTENSIONS)})")
