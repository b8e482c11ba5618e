"""An `image_class_folder`: ImageNet-style class sub-folders, for zero-shot classification.

    F/<class>/<image>                      classes are the sub-folder names, sorted
    F/{train,val,test}/<class>/<image>     the same, with the official splits

Class names are the folder names with underscores read as spaces ("red_circle" -> "red
circle"): what the prompt templates are filled with (an evaluator may name the classes itself).
An image that cannot be decoded is a bad row, reported as for the other folders; with no split
folders the random hold-out decides each image's split.
"""

from __future__ import annotations

import dataclasses
import os

from vlpjax.data.folder import SPLITS, BadRow, ScanReport, check_image
from vlpjax.errors import InvalidInput

CLASSES_FILE = "classes.json"


@dataclasses.dataclass
class LabelledImage:
    image: str  # relative to the folder
    label: int
    split: str | None


def _subfolders(path: str) -> list[str]:
    return sorted(name for name in os.listdir(path) if os.path.isdir(os.path.join(path, name)))


def class_names(folders: list[str]) -> list[str]:
    return [name.replace("_", " ") for name in folders]


def _split_roots(root: str) -> list[tuple[str | None, str]]:
    """(split, folder holding the class folders): the split folders where F has them, else F."""
    splits = [name for name in _subfolders(root) if name in SPLITS]
    return [(split, split) for split in splits] if splits else [(None, "")]


def scan_class_folder(root: str) -> tuple[list[str], ScanReport]:
    """(class folder names, report of LabelledImage rows and bad files)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image_class_folder {root!r} is not a directory")
    roots = _split_roots(root)
    classes = sorted({c for _, sub in roots for c in _subfolders(os.path.join(root, sub))})
    if not classes:
        raise InvalidInput(f"image_class_folder {root!r} has no class sub-folders")
    index = {name: i for i, name in enumerate(classes)}
    rows, bad, decodable = [], [], {}
    for split, sub in roots:
        for name in _subfolders(os.path.join(root, sub)):
            for file in sorted(os.listdir(os.path.join(root, sub, name))):
                image = os.path.join(sub, name, file)
                try:
                    check_image(root, image, decodable)
                except ValueError as err:
                    bad.append(BadRow(len(rows) + len(bad) + 1, str(err), image))
                    continue
                rows.append(LabelledImage(image, index[name], split))
    return classes, ScanReport(rows, bad)
