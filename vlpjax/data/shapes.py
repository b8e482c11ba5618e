"""Procedural scenes for the embedded `synthetic_shapes` dataset.

A scene holds 1-3 objects, each a (shape, colour, size) in its own cell of a 3x3 grid. From a
scene we draw the image, write paraphrased captions that name every object, and pose
question-answer pairs. Everything is a function of a numpy Generator, so a seed fixes it all.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterator

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 205),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
    "cyan": (40, 210, 220),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
SIZE_RADIUS = {"small": 0.22, "large": 0.42}  # as a fraction of the cell size
BACKGROUND = (30, 30, 30)
# (row, column) -> phrase; only "left" and "right" carry the horizontal sense, so a
# horizontal flip is exactly a swap of those two words.
POSITIONS = {
    (0, 0): "at the top left",
    (0, 1): "at the top",
    (0, 2): "at the top right",
    (1, 0): "on the left",
    (1, 1): "in the middle",
    (1, 2): "on the right",
    (2, 0): "at the bottom left",
    (2, 1): "at the bottom",
    (2, 2): "at the bottom right",
}
COUNT_WORDS = ("zero", "one", "two", "three")
OBJECT_COUNT_PROBS = (0.2, 0.4, 0.4)
CLASS_NAMES = tuple(f"{c} {s}" for c in COLOUR_NAMES for s in SHAPES)


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    cell: tuple[int, int]

    def noun_phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"  # sizes start with a consonant

    @property
    def class_id(self) -> int:
        return COLOUR_NAMES.index(self.colour) * len(SHAPES) + SHAPES.index(self.shape)


Scene = tuple[ShapeObject, ...]


def sample_scene(rng: np.random.Generator) -> Scene:
    count = int(rng.choice([1, 2, 3], p=OBJECT_COUNT_PROBS))
    cells = rng.choice(9, size=count, replace=False)
    return tuple(
        sorted(
            (
                ShapeObject(
                    shape=SHAPES[rng.integers(len(SHAPES))],
                    colour=COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))],
                    size=SIZES[rng.integers(len(SIZES))],
                    cell=(int(c) // 3, int(c) % 3),
                )
                for c in cells
            ),
            key=lambda o: o.cell,
        )
    )


def unique_scenes(rng: np.random.Generator, count: int) -> Iterator[Scene]:
    """`count` scenes, no two alike, so every test caption names exactly one image."""
    seen: set[Scene] = set()
    while len(seen) < count:
        scene = sample_scene(rng)
        if scene not in seen:
            seen.add(scene)
            yield scene


# --- drawing -------------------------------------------------------------------------------


def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "triangle":  # apex up, base at cy + 0.8r
        return (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) * 0.55)
    raise ValueError(f"unknown shape {shape!r}")


def object_geometry(obj: ShapeObject, image_size: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Centre (x, y) and radius in pixels, jittered inside the object's cell."""
    cell = image_size / 3
    r = SIZE_RADIUS[obj.size] * cell
    slack = max(cell / 2 - r - 1, 0)
    cx = (obj.cell[1] + 0.5) * cell + rng.uniform(-slack, slack)
    cy = (obj.cell[0] + 0.5) * cell + rng.uniform(-slack, slack)
    return cx, cy, r


def draw_scene(scene: Scene, image_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """uint8 image [S,S,3] and normalised boxes [N,4] (x1, y1, x2, y2)."""
    image = np.empty((image_size, image_size, 3), np.uint8)
    image[:] = BACKGROUND
    yy, xx = np.mgrid[:image_size, :image_size] + 0.5
    boxes = []
    for obj in scene:
        cx, cy, r = object_geometry(obj, image_size, rng)
        mask = _shape_mask(obj.shape, xx, yy, cx, cy, r)
        image[mask] = COLOURS[obj.colour]
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return image, np.asarray(boxes, np.float32).reshape(-1, 4) / image_size


# --- language ------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _described(obj: ShapeObject, position_first: bool) -> str:
    where = POSITIONS[obj.cell]
    return f"{where} {obj.noun_phrase()}" if position_first else f"{obj.noun_phrase()} {where}"


def captions(scene: Scene, rng: np.random.Generator, count: int = 3) -> list[str]:
    """`count` paraphrases, each naming every object's size, colour, shape and position."""
    out = []
    for i in range(count):
        order = list(rng.permutation(len(scene))) if i else list(range(len(scene)))
        objects = [scene[j] for j in order]
        style = i % 3
        if style == 0:
            text = _join([_described(o, False) for o in objects])
        elif style == 1:
            text = "there is " + _join([_described(o, False) for o in objects])
        else:
            text = "; ".join(_described(o, True) for o in objects)
        out.append(text)
    return out


_LEFT_OR_RIGHT = re.compile(r"\b(left|right)\b")


def swap_left_right(text: str) -> str:
    """The caption or question of the horizontally flipped image. Whole words only, wherever
    they stand: "top left?" and "top left," swap as well as "left of"."""
    return _LEFT_OR_RIGHT.sub(lambda m: "right" if m.group(1) == "left" else "left", text)


def questions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Colour, shape, count, existence and relative-position questions with one-word answers."""
    qa = [("how many objects are there?", COUNT_WORDS[len(scene)])]
    obj = scene[rng.integers(len(scene))]
    qa.append((f"what shape is {POSITIONS[obj.cell]}?", obj.shape))
    qa.append((f"what colour is the object {POSITIONS[obj.cell]}?", obj.colour))
    colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    qa.append((f"how many {colour} objects are there?", COUNT_WORDS[sum(o.colour == colour for o in scene)]))
    probe_colour, probe_shape = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))], SHAPES[rng.integers(len(SHAPES))]
    if rng.random() < 0.5:  # half the existence questions ask about an object that is present
        probe_colour, probe_shape = obj.colour, obj.shape
    present = any(o.colour == probe_colour and o.shape == probe_shape for o in scene)
    qa.append((f"is there {_article(probe_colour)} {probe_colour} {probe_shape}?", "yes" if present else "no"))
    if len(scene) >= 2:
        a, b = (scene[i] for i in rng.choice(len(scene), size=2, replace=False))
        if a.cell[1] != b.cell[1]:
            left = a.cell[1] < b.cell[1]
            qa.append((f"is the {a.colour} {a.shape} left of the {b.colour} {b.shape}?", "yes" if left else "no"))
        else:
            above = a.cell[0] < b.cell[0]
            qa.append((f"is the {a.colour} {a.shape} above the {b.colour} {b.shape}?", "yes" if above else "no"))
    return qa


def main_label(scene: Scene) -> int:
    """Class (colour x shape) of the largest object, the first one on ties: the zero-shot target."""
    largest = max(scene, key=lambda o: (SIZES.index(o.size), -scene.index(o)))
    return largest.class_id
