"""Validation of an `interleaved_folder`: a folder of images plus a JSONL file of documents.

One document a line, its chunks in reading order; a chunk is text or an image path relative
to the folder:

    {"chunks": ["My trip.", {"image": "day1.jpg"}, "We hiked all day.", {"image": "day2.jpg"}, "Then it rained."]}

A document may name its split ("split": "train" | "val" | "test"), as manifest rows may.

A document becomes `[BOS] My trip. <image> We hiked all day. <|endofchunk|> <image> Then it
rained. <|endofchunk|> [EOS]`: the text after an image belongs to it. A document is bad when its
JSON does not parse, it has no image, a chunk is neither a non-empty string nor {"image": path},
or an image is missing, undecodable or outside the folder. Bad documents are skipped and listed
like bad manifest rows; too many stop the build.
"""

from __future__ import annotations

import dataclasses
import json

from vlpjax.data.folder import ScanReport, check_image, row_split, scan_jsonl

DOCUMENTS_FILE = "documents.jsonl"


@dataclasses.dataclass
class Document:
    line: int
    images: list[str]
    texts: list[str]  # texts[0] comes before the first image, texts[i] after image i (len = images + 1)
    split: str | None = None


def parse_document(line_no: int, text: str, root: str, decodable: dict[str, bool]) -> Document:
    record = json.loads(text)
    chunks = record.get("chunks") if isinstance(record, dict) else None
    if not isinstance(chunks, list) or not chunks:
        raise ValueError("document needs a non-empty 'chunks' list")
    split = row_split(record)
    images, texts = [], [""]
    for chunk in chunks:
        if isinstance(chunk, dict) and isinstance(chunk.get("image"), str):
            check_image(root, chunk["image"], decodable)
            images.append(chunk["image"])
            texts.append("")
        elif isinstance(chunk, str) and chunk.strip():
            texts[-1] = f"{texts[-1]} {chunk.strip()}".strip()
        else:
            raise ValueError('a chunk must be a non-empty string or {"image": path}')
    if not images:
        raise ValueError("document has no image")
    return Document(line_no, images, texts, split)


def scan_documents(root: str, documents: str = DOCUMENTS_FILE) -> ScanReport:
    return scan_jsonl(root, documents, "documents file", parse_document)
