"""Procedural VQA tasks: the tiny world's benchmarks.

Every task family is a tiny benchmark of its own with a train and a test split. Each item is
drawn from a ``numpy`` generator seeded by (seed, task, split), rendered with PIL, and stored
in a parquet file with the schema below. Same seed -> bit-identical parquet.

Parquet schema (one row per item)
---------------------------------
=========  ===========================  ================================================
column     type                         meaning
=========  ===========================  ================================================
id         string                       ``<task>-<split>-<index>``, unique
task       string                       task family (a key of :data:`TASKS`)
split      string                       ``train`` or ``test``
image      struct<bytes, path>          PNG bytes (``datasets.Image()`` encoding)
question   string                       the question text, options included for MC items
answer     string                       ground truth (a word, a number, or a letter A-D)
options    list<string>                 the A-D option texts of MC items, empty otherwise
=========  ===========================  ================================================
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "cross")
LETTERS = "ABCD"
BACKGROUND = (255, 255, 255)

# 3x5 bitmap digits, one string per row ("#" = ink), for the OCR-like task.
DIGIT_FONT = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", ".##", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
}


@dataclass(frozen=True)
class Item:
    """One rendered VQA item before it is written to parquet."""

    image: Image.Image
    question: str
    answer: str
    options: tuple[str, ...] = ()


def _canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (size, size), BACKGROUND)
    return image, ImageDraw.Draw(image)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "cross":
        w, h = (x1 - x0) / 3, (y1 - y0) / 3
        draw.rectangle((x0 + w, y0, x1 - w, y1), fill=fill)
        draw.rectangle((x0, y0 + h, x1, y1 - h), fill=fill)
    else:  # pragma: no cover - guarded by SHAPES
        raise ValueError(f"unknown shape {shape!r}")


def _cell_box(rng: np.random.Generator, size: int, row: int, col: int, grid: int = 2) -> tuple[float, ...]:
    """A box near the centre of cell (row, col) of a grid x grid layout (small jitter: the
    tiny vision towers learn patch-aligned layouts quickly, free translation slowly)."""
    cell = size / grid
    side = cell * rng.uniform(0.6, 0.8)
    x0, y0 = (np.array([col, row]) * cell + (cell - side) / 2 + rng.uniform(-cell / 12, cell / 12, 2)).tolist()
    return (x0, y0, x0 + side, y0 + side)


def _colour(rng: np.random.Generator, exclude: tuple[str, ...] = ()) -> str:
    names = [c for c in COLOURS if c not in exclude]
    return names[rng.integers(len(names))]


def make_colour(rng: np.random.Generator, size: int) -> Item:
    """What colour is the (single, large) shape?"""
    image, draw = _canvas(size)
    colour = _colour(rng)
    side = size * rng.uniform(0.45, 0.8)
    x0, y0 = rng.uniform(0, size - side, 2)
    _draw_shape(draw, SHAPES[rng.integers(len(SHAPES))], (x0, y0, x0 + side, y0 + side), COLOURS[colour])
    return Item(image, "What colour is the shape?", colour)


def make_shape(rng: np.random.Generator, size: int) -> Item:
    """Multiple choice: which shape is shown? Options A-D, in a fixed order."""
    image, draw = _canvas(size)
    shape = SHAPES[rng.integers(len(SHAPES))]
    side = size * rng.uniform(0.8, 0.95)
    x0, y0 = (size - side) / 2 + rng.uniform(-size / 20, size / 20, 2)
    _draw_shape(draw, shape, (x0, y0, x0 + side, y0 + side), COLOURS[_colour(rng)])
    options = SHAPES
    lines = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, options))
    question = f"Which shape is in the image?\n{lines}\nAnswer with the option's letter."
    return Item(image, question, LETTERS[options.index(shape)], options)


def make_count(rng: np.random.Generator, size: int) -> Item:
    """How many squares? 1-4 squares, at most one per cell of a 2x2 grid."""
    image, draw = _canvas(size)
    count = int(rng.integers(1, 5))
    for cell in rng.permutation(4)[:count]:
        _draw_shape(draw, "square", _cell_box(rng, size, cell // 2, cell % 2), COLOURS[_colour(rng)])
    return Item(image, "How many squares are there?", str(count))


def make_size(rng: np.random.Generator, size: int) -> Item:
    """Relation between two objects: is the red shape bigger or smaller than the blue one?"""
    image, draw = _canvas(size)
    cells = [(int(c) // 2, int(c) % 2) for c in rng.permutation(4)[:2]]
    cell = size / 2
    big, small = cell * rng.uniform(0.8, 0.95), cell * rng.uniform(0.3, 0.5)
    red_bigger = bool(rng.integers(2))
    for name, side, (row, col) in (("red", big if red_bigger else small, cells[0]),
                                   ("blue", small if red_bigger else big, cells[1])):
        x0, y0 = col * cell + (cell - side) / 2, row * cell + (cell - side) / 2
        _draw_shape(draw, SHAPES[rng.integers(len(SHAPES))], (x0, y0, x0 + side, y0 + side), COLOURS[name])
    return Item(image, "Is the red shape bigger or smaller than the blue shape?", "bigger" if red_bigger else "smaller")


def make_chart(rng: np.random.Generator, size: int) -> Item:
    """Read a value off a bar chart: the height of the tallest of three bars (1-5)."""
    image, draw = _canvas(size)
    values = rng.integers(1, 6, 3)
    unit = (size - 6) / 5
    for level in range(1, 6):  # light gridlines, one per unit
        y = size - 3 - level * unit
        draw.line((0, y, size, y), fill=(200, 200, 200))
    width = size / 3
    for i, value in enumerate(values):
        x0 = i * width + width * 0.2
        draw.rectangle((x0, size - 3 - value * unit, x0 + width * 0.6, size - 3), fill=(60, 60, 60))
    return Item(image, "What is the value of the tallest bar?", str(int(values.max())))


def make_digits(rng: np.random.Generator, size: int) -> Item:
    """OCR-like: read a rendered two-digit number."""
    image, draw = _canvas(size)
    text = f"{int(rng.integers(10, 100))}"
    scale = max(1, size // 10)
    glyph_w, glyph_h, gap = 3 * scale, 5 * scale, scale
    total_w = 2 * glyph_w + gap
    jitter = max(1, size // 20)
    x, y = (int(v) + int(j) for v, j in zip(((size - total_w) // 2, (size - glyph_h) // 2), rng.integers(-jitter, jitter + 1, 2)))
    for k, digit in enumerate(text):
        gx = x + k * (glyph_w + gap)
        for r, row in enumerate(DIGIT_FONT[digit]):
            for c, ink in enumerate(row):
                if ink == "#":
                    draw.rectangle(
                        (gx + c * scale, y + r * scale, gx + (c + 1) * scale - 1, y + (r + 1) * scale - 1),
                        fill=(0, 0, 0),
                    )
    return Item(image, "What number is written in the image?", text)


TASKS: dict[str, Callable[[np.random.Generator, int], Item]] = {
    "colour": make_colour,
    "shape": make_shape,
    "count": make_count,
    "size": make_size,
    "chart": make_chart,
    "digits": make_digits,
}
SPLITS = ("train", "test")


def task_rng(seed: int, task: str, split: str) -> np.random.Generator:
    """An independent, reproducible stream per (seed, task, split)."""
    return np.random.default_rng([seed, zlib.crc32(task.encode()), SPLITS.index(split)])


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def generate(task: str, split: str, n: int, seed: int, image_size: int) -> list[dict]:
    """Render ``n`` items of one task and split as parquet-ready rows."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {sorted(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    rng = task_rng(seed, task, split)
    rows = []
    for index in range(n):
        item = TASKS[task](rng, image_size)
        rows.append(
            {
                "id": f"{task}-{split}-{index:05d}",
                "task": task,
                "split": split,
                "image": {"bytes": png_bytes(item.image), "path": None},
                "question": item.question,
                "answer": item.answer,
                "options": list(item.options),
            }
        )
    return rows


def features():
    """The ``datasets`` features of the parquet schema (image decodes to PIL)."""
    import datasets

    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "task": datasets.Value("string"),
            "split": datasets.Value("string"),
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "options": datasets.Sequence(datasets.Value("string")),
        }
    )


def write_parquet(rows: list[dict], path) -> None:
    """Write rows with the documented schema; the HF feature metadata makes ``image`` decode to PIL."""
    import datasets

    datasets.Dataset.from_list(rows, features=features()).to_parquet(str(path))
