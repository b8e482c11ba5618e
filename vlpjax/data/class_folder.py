"""An `image_class_folder`: ImageNet-style class sub-folders, for zero-shot classification.

    F/<class>/<image>                      classes are the sub-folder names, sorted
    F/{train,val,test}/<class>/<image>     the same, with the official splits

Class names are the folder names with underscores read as spaces ("red_circle" -> "red
circle"): what the prompt templates are filled with (an evaluator may name the classes itself).
A class's images may lie in sub-folders of its folder; hidden files and files without an image
extension are ignored. An image that cannot be decoded is a bad row, reported as for the other
folders; with no split folders the random hold-out decides each image's split. A folder holding
both split folders and class folders is refused.
"""

from __future__ import annotations

import dataclasses
import os

from vlpjax.data.folder import SPLITS, BadRow, ScanReport, check_image
from vlpjax.errors import InvalidInput

CLASSES_FILE = "classes.json"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


@dataclasses.dataclass
class LabelledImage:
    image: str  # relative to the folder
    label: int
    split: str | None


def _subfolders(path: str) -> list[str]:
    return sorted(n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n)) and not n.startswith("."))


def class_names(folders: list[str]) -> list[str]:
    return [name.replace("_", " ") for name in folders]


def _split_roots(root: str) -> list[tuple[str | None, str]]:
    """(split, folder holding the class folders): the split folders where F has them, else F."""
    folders = _subfolders(root)
    splits = [name for name in folders if name in SPLITS]
    if splits and len(splits) != len(folders):
        others = sorted(set(folders) - set(splits))
        raise InvalidInput(f"image_class_folder {root!r} mixes split folders {splits} with class folders {others[:3]}")
    return [(split, split) for split in splits] if splits else [(None, "")]


def _images_under(root: str, folder: str) -> list[str]:
    """Image files under root/folder, sub-folders included, as paths relative to root."""
    found = []
    for path, dirs, files in sorted(os.walk(os.path.join(root, folder))):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file in sorted(files):
            if not file.startswith(".") and file.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(path, file), root))
    return found


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
            for image in _images_under(root, os.path.join(sub, name)):
                try:
                    check_image(root, image, decodable)
                except ValueError as err:
                    bad.append(BadRow(len(rows) + len(bad) + 1, f"{image}: {err}", image))
                    continue
                rows.append(LabelledImage(image, index[name], split))
    return classes, ScanReport(rows, bad)
