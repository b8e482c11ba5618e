"""Reading webdataset tar shards (the LAION / DataComp format) one sample at a time.

A shard is a tar file (or .tar.gz) whose members are grouped into samples by key, as
webdataset does: the member's path up to the first dot of its file name (`0001234.jpg`,
`0001234.txt`, `0001234.json` are one sample); a member whose name has no stem before a dot
(`._0001234.jpg`, `README`) is skipped. A sample needs an image (jpg, jpeg, png or webp) and a
caption: a `.txt` file, or a `.json` file with a "caption" or "text" string (or a "captions"
list). Members are read as the tar streams past, so memory holds one sample, never a shard.

A shard that ends early (a truncated download: the gzip stream or the tar's end-of-archive
blocks are missing) stops the build naming it: the samples it lost cannot be counted.

Shard patterns expand brace ranges as webdataset does: `shards/{00000..00099}.tar` names 100
files (zero padding kept), `{a,b}` alternatives.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import re
import tarfile
import zlib
from typing import Callable, Iterator

from vlpjax.errors import InvalidInput

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_BRACES = re.compile(r"\{([^{}]*)\}")
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's: (key, extension)
END_OF_ARCHIVE = 1024  # two zero blocks close a tar


class DamagedShard(InvalidInput):
    """A shard that cannot be read to its end."""


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
            raise InvalidInput(f"shard pattern {pattern!r}: range {{{body}}} counts down")
        width = len(first)
        return [str(i).zfill(width) for i in range(int(first), int(last) + 1)]
    if "," in body:
        return body.split(",")
    raise InvalidInput(f"shard pattern {pattern!r}: {{{body}}} is neither a range a..b nor a list a,b")


@dataclasses.dataclass
class Sample:
    shard: str
    key: str
    files: dict[str, bytes]  # extension (lower case) -> bytes
    problem: str | None = None  # what makes it bad before its files are looked at


def _open(path: str) -> tarfile.TarFile:
    """A streaming reader; gzip is opened here so that a truncated stream raises (EOFError)."""
    if path.endswith((".gz", ".tgz")):
        return tarfile.open(fileobj=gzip.open(path, "rb"), mode="r|")
    return tarfile.open(path, mode="r|*")


def _check_closed(path: str) -> None:
    """An uncompressed tar ends in zero blocks; one cut on a block boundary does not."""
    if path.endswith((".gz", ".tgz", ".bz2", ".xz")):
        return
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - END_OF_ARCHIVE))
        if size < END_OF_ARCHIVE or any(f.read()):
            raise tarfile.ReadError("it does not end in the tar end-of-archive blocks")


def _members(path: str) -> Iterator[tuple[str, str, Callable[[], bytes]]]:
    """(key, extension, read) per file member; `read` must be called before the next member
    (the tar streams): the key is known before the data, so a sample ends before damage."""
    with _open(path) as tar:
        for member in tar:
            match = _KEY.match(member.name) if member.isfile() else None
            if match:
                yield match.group(1), match.group(2).lower(), lambda member=member: tar.extractfile(member).read()
    _check_closed(path)


def shard_samples(path: str) -> Iterator[Sample]:
    """The samples of one shard, in tar order; members stream past, one sample is held. A shard
    that cannot be read to its end raises DamagedShard after the samples before the damage."""
    current: Sample | None = None
    count = 0
    try:
        for key, extension, read in _members(path):
            if current is not None and key != current.key:
                count += 1
                yield current
                current = None
            if current is None:
                current = Sample(path, key, {})
            if extension in current.files:
                current.problem = f"two .{extension} members"
            current.files[extension] = read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DamagedShard(
            f"shard {path!r} breaks off after {count} samples ({err}): replace it or leave it out of --shards"
        ) from None
    if current is not None:
        yield current


def caption_of(sample: Sample) -> str:
    """The sample's caption; ValueError (the reason) where it has none."""
    if sample.problem:
        raise ValueError(sample.problem)
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
