"""`vlpjax data import FORMAT ... --out FOLDER`: published datasets as an `image_text_folder`.

Each importer reads the files a dataset is distributed as and returns manifest rows (see
data/folder.py): every caption of an image in one row, each VQA question in its own row with
all its answers, and the official split where the format gives one. `write_folder` then puts
the images under FOLDER/images (hard links where the file system allows, else copies: the
folder builder refuses files that lead outside the folder) and writes FOLDER/manifest.jsonl.

    coco-captions  captions_*.json (COCO's `images` + `annotations`), optionally with Karpathy's
                   dataset_coco.json for the splits (its "restval" is train)
    vqav2          a questions file plus its annotations file; the 10 answers of each question
                   are kept, for the min(#matches / 3, 1) score
    flickr30k      Karpathy's dataset_flickr30k.json: captions and splits

An image the files name but --images does not hold is reported and left out.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections import defaultdict
from typing import Callable, Iterable

from vlpjax.errors import InvalidInput

MANIFEST = "manifest.jsonl"
IMAGES = "images"
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


@dataclasses.dataclass
class Imported:
    rows: list[dict]  # manifest rows; "image" is the source path relative to --images
    missing: list[str]  # source images the files name that do not exist


def read_json(path: str, what: str) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path!r} does not exist") from None
    except ValueError as err:
        raise InvalidInput(f"{what} {path!r} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} {path!r} does not hold a JSON object")
    return value


def _field(record: dict, key: str, where: str):
    if key not in record:
        raise InvalidInput(f"{where}: an entry has no {key!r} field (is this the right file?)")
    return record[key]


def _existing(images_dir: str, rows: Iterable[dict]) -> Imported:
    kept, missing = [], []
    for row in rows:
        (kept if os.path.isfile(os.path.join(images_dir, row["image"])) else missing).append(row)
    return Imported(kept, sorted({row["image"] for row in missing}))


# --- the formats ---------------------------------------------------------------------------


def _karpathy_entries(path: str) -> list[dict]:
    entries = _field(read_json(path, "Karpathy split file"), "images", path)
    for entry in entries:
        if _field(entry, "split", path) not in KARPATHY_SPLITS:
            raise InvalidInput(f"{path}: split {entry['split']!r} is not one of {sorted(KARPATHY_SPLITS)}")
    return entries


def _image_index(images_dir: str) -> dict[str, str]:
    """Every file under `images_dir` by its name: COCO's captions files name images without the
    folder they are distributed in (train2014/, val2017/, ...)."""
    index = {}
    for folder, _, names in sorted(os.walk(images_dir)):
        for name in sorted(names):
            index.setdefault(name, os.path.relpath(os.path.join(folder, name), images_dir))
    return index


def import_coco_captions(images_dir: str, captions: list[str], karpathy: str | None = None) -> Imported:
    """Rows from COCO caption files; splits from Karpathy's file when given (by COCO image id).
    An image is found under --images by its file name, in whichever sub-folder holds it (else at
    Karpathy's filepath). A caption annotation counted twice (the same file given twice) is kept
    once; empty captions are dropped."""
    splits, folders = {}, {}
    if karpathy:
        for entry in _karpathy_entries(karpathy):
            image_id = _field(entry, "cocoid", karpathy)
            splits[image_id] = KARPATHY_SPLITS[entry["split"]]
            folders[image_id] = entry.get("filepath", "")
    texts: dict[int, dict] = defaultdict(dict)  # image id -> {annotation id: caption}, in file order
    files: dict[int, str] = {}
    index = _image_index(images_dir)
    for path in captions:
        data = read_json(path, "COCO captions file")
        for image in _field(data, "images", path):
            image_id, name = _field(image, "id", path), _field(image, "file_name", path)
            files[image_id] = index.get(name) or os.path.join(folders.get(image_id, ""), name)
        for note in _field(data, "annotations", path):
            caption = _field(note, "caption", path).strip()
            if caption:
                texts[_field(note, "image_id", path)][note.get("id", len(texts))] = caption
    rows = []
    for image_id, file in files.items():
        if not texts.get(image_id):
            continue
        row = {"image": file, "captions": list(texts[image_id].values())}
        if image_id in splits:
            row["split"] = splits[image_id]
        rows.append(row)
    return _existing(images_dir, rows)


def import_vqav2(
    images_dir: str, questions: list[str], annotations: list[str], split: list[str] | None = None
) -> Imported:
    """One row per question with its 10 answers. `questions[i]` goes with `annotations[i]` (and
    `split[i]`: import train and val together, as train and test). The image path follows COCO's
    naming, <data_subtype>/COCO_<data_subtype>_<image id, 12 digits>.jpg, under --images."""
    if len(questions) != len(annotations) or (split and len(split) != len(questions)):
        raise InvalidInput("give one --annotations (and one --split, if any) per --questions, in the same order")
    rows = []
    for i, (q_file, a_file) in enumerate(zip(questions, annotations, strict=True)):
        rows += _vqav2_rows(q_file, a_file, split[i] if split else None)
    return _existing(images_dir, rows)


def _vqav2_rows(questions: str, annotations: str, split: str | None) -> list[dict]:
    q_data = read_json(questions, "VQAv2 questions file")
    a_data = read_json(annotations, "VQAv2 annotations file")
    subtype = q_data.get("data_subtype", "")
    answers = {}
    for note in _field(a_data, "annotations", annotations):
        answers[_field(note, "question_id", annotations)] = [
            _field(a, "answer", annotations) for a in _field(note, "answers", annotations)
        ]
    rows = []
    for q in _field(q_data, "questions", questions):
        question_id, image_id = _field(q, "question_id", questions), _field(q, "image_id", questions)
        if question_id not in answers:
            raise InvalidInput(f"{annotations} has no answers for question {question_id} of {questions}")
        image = os.path.join(subtype, f"COCO_{subtype}_{image_id:012d}.jpg")
        row = {"image": image, "question": _field(q, "question", questions), "answers": answers[question_id]}
        rows.append({**row, "split": split} if split else row)
    return rows


def import_flickr30k(images_dir: str, karpathy: str) -> Imported:
    """Rows from Karpathy's dataset_flickr30k.json: 5 captions per image and the split."""
    rows = []
    for entry in _karpathy_entries(karpathy):
        sentences = [_field(s, "raw", karpathy).strip() for s in _field(entry, "sentences", karpathy)]
        row = {"image": _field(entry, "filename", karpathy), "captions": sentences}
        rows.append({**row, "split": KARPATHY_SPLITS[entry["split"]]})
    return _existing(images_dir, rows)


# --- writing the folder ----------------------------------------------------------------------


def _place(source: str, target: str, copy: bool) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.exists(target):
        return
    if not copy:
        try:
            os.link(source, target)
            return
        except OSError:  # another file system, or links not allowed: copy instead
            pass
    shutil.copyfile(source, target)


def write_folder(imported: Imported, images_dir: str, out: str, copy: bool = False, overwrite: bool = False) -> str:
    """FOLDER/images/<source path> for every image, then FOLDER/manifest.jsonl (written to a
    temporary name first; an existing one only with `overwrite`). Returns the manifest's path."""
    if not imported.rows:
        raise InvalidInput(f"nothing to import: none of the images the files name is under {images_dir!r}")
    if os.path.exists(os.path.join(out, MANIFEST)) and not overwrite:
        raise InvalidInput(f"{out!r} already holds a {MANIFEST}: import into a new folder, or pass --overwrite")
    os.makedirs(out, exist_ok=True)
    for image in sorted({row["image"] for row in imported.rows}):
        _place(os.path.join(images_dir, image), os.path.join(out, IMAGES, image), copy)
    manifest = os.path.join(out, MANIFEST)
    with open(manifest + ".tmp", "w") as f:
        for row in imported.rows:
            f.write(json.dumps({**row, "image": f"{IMAGES}/{row['image']}"}) + "\n")
    os.replace(manifest + ".tmp", manifest)
    return manifest


IMPORTERS: dict[str, Callable[..., Imported]] = {
    "coco-captions": import_coco_captions,
    "vqav2": import_vqav2,
    "flickr30k": import_flickr30k,
}
