"""Training digits that look written with a pen, as visitors' drawings do.

MNIST digits were scanned from paper: strokes of uneven width, written by American writers.
Drawn digits are uniform-width strokes (preprocess renders them with a round brush) and come
from writers everywhere. Two sources of such digits, both ending in the dashboard's own
layout step (preprocess.to_mnist_layout):

- `redraw_images`: each MNIST digit's skeleton re-drawn with a round pen of random width.
- `stroke_digit_images`: digits written in stroke space (Hershey stroke fonts and hand-made
  templates of written conventions: slashed or dotted zeros at any angle, ones with a flag, a
  foot or both, continental ones, crossed sevens, open fours, nines with straight tails),
  slanted, rotated, stretched, jittered point by point and rendered by
  preprocess.strokes_to_input, the path every drawing takes.

Both are cached under data/cache (computing them takes about a millisecond an image); the
cache names carry a digest of the code that draws them, so an edited generator never reuses
images drawn by the old one.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from digitlib.preprocess import (
    CANVAS_SIZE,
    MNIST_BOX,
    MNIST_SIZE,
    Brush,
    DrawingError,
    strokes_to_input,
    to_mnist_layout,
)

PEN_WIDTHS = (0.08, 0.2)  # pen width as a share of the digit's larger side (the dashboard's brush: 0.15)
REDRAW_SCALE = 4  # skeletons are taken at 4x MNIST's resolution: smoother lines
INK_LEVEL = 100  # grey level (of 255) above which an upscaled MNIST pixel is ink

# Fonts whose digits are written with a single line (multi-line "m" fonts and serif fonts
# drawn with a uniform pen still read as digits; gothic ones do not).
DIGIT_FONTS = ("futural", "rowmans", "cursive", "scripts", "scriptc", "timesr", "timesi", "futuram")
TEMPLATE_SHARE = 0.4  # share of stroke digits drawn from the hand-made templates, the rest from fonts
VARIANT_SHARE = 0.35  # share of font zeros, ones and sevens given a written variant


# --- MNIST re-drawn with a pen ---------------------------------------------------------------


def redraw_digit(image: np.ndarray, width: float) -> np.ndarray:
    """One MNIST digit (uint8 28x28) re-drawn along its skeleton with a round pen, in MNIST's layout.

    `width` is the pen width as a share of MNIST's 20-pixel box.
    """
    from scipy.ndimage import distance_transform_edt
    from skimage.morphology import skeletonize

    size = MNIST_SIZE * REDRAW_SCALE
    big = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    skeleton = skeletonize(big > INK_LEVEL)
    if not skeleton.any():
        return image.copy()
    radius = width * MNIST_BOX * REDRAW_SCALE / 2
    # Anti-aliased disc of ink around every skeleton pixel: a round pen run along the skeleton.
    ink = np.clip(radius + 0.5 - distance_transform_edt(~skeleton), 0, 1)
    return to_mnist_layout(np.round(ink * 255).astype(np.uint8))


def redraw_images(images: np.ndarray, seed: int = 0, cache_dir: Path | None = None) -> np.ndarray:
    """Every image of `images` (uint8 N x 28 x 28) re-drawn with a pen of random width (same seed, same result)."""

    def compute() -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        widths = rng.uniform(*PEN_WIDTHS, len(images))
        redrawn = [redraw_digit(im, w) for im, w in zip(images, widths, strict=True)]
        return {"images": np.stack(redrawn) if redrawn else images.copy()}

    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]
    return _cached(cache_dir, f"redraw-{digest}-{seed}", compute)["images"]


# --- digits written in stroke space ----------------------------------------------------------


def _ellipse(cx: float, cy: float, rx: float, ry: float, start: float = -math.pi / 2, turns: float = 1.0, n: int = 40):
    t = start + np.linspace(0, 2 * math.pi * turns, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _line(*points) -> np.ndarray:
    return np.array(points, float)


def _templates() -> list[tuple[int, list[np.ndarray]]]:
    """Hand-made digits (x right, y down, height 1) in ways of writing the fonts lack."""
    ring = _ellipse(0.35, 0.5, 0.3, 0.5)
    head = _ellipse(0.38, 0.27, 0.28, 0.27, start=0.0)
    return [
        (1, [_line((0.1, 0.35), (0.5, 0.0), (0.5, 1.0))]),  # continental one: a long lead-in
        (1, [_line((0.3, 0.15), (0.5, 0.0), (0.5, 1.0)), _line((0.25, 1.0), (0.75, 1.0))]),  # flag and foot
        (1, [_line((0.5, 0.0), (0.5, 1.0)), _line((0.25, 1.0), (0.75, 1.0))]),  # foot only
        (4, [_line((0.35, 0.0), (0.05, 0.6), (0.8, 0.6)), _line((0.6, 0.15), (0.6, 1.0))]),  # open four
        (4, [_line((0.6, 1.0), (0.6, 0.0), (0.05, 0.65), (0.8, 0.65))]),  # closed, one stroke
        (7, [_line((0.0, 0.0), (0.7, 0.0), (0.3, 1.0)), _line((0.15, 0.5), (0.6, 0.5))]),  # crossed seven
        (7, [_line((0.0, 0.15), (0.05, 0.0), (0.7, 0.0), (0.35, 1.0))]),  # seven with a serif
        (9, [head, _line((0.66, 0.27), (0.62, 1.0))]),  # nine with a straight tail
        (9, [np.concatenate([head, _ellipse(0.36, 0.55, 0.3, 0.45, start=0.0, turns=0.3)])]),  # curled tail
        (0, [ring]),
        (
            2,
            [np.concatenate([_ellipse(0.35, 0.3, 0.3, 0.3, start=-math.pi, turns=0.6), _line((0.0, 1.0), (0.7, 1.0))])],
        ),
    ]


@lru_cache(maxsize=1)
def font_digits() -> list[tuple[int, list[np.ndarray]]]:
    """(label, strokes) of the digits 0-9 in each of DIGIT_FONTS (Hershey fonts, y pointing down)."""
    from HersheyFonts import HersheyFonts

    font = HersheyFonts()
    out = []
    for name in DIGIT_FONTS:
        font.load_default_font(name)
        for label in range(10):
            strokes = [np.asarray(s, float) for s in font.strokes_for_text(str(label)) if len(s) >= 2]
            out.append((label, strokes))
    return out


def _box(strokes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    points = np.concatenate(strokes)
    return points.min(0), points.max(0)


def _with_variant(label: int, strokes: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """A written variant of a zero (slash at any angle, or a dot), a one (flag, foot) or a seven (bar)."""
    low, high = _box(strokes)
    (w, h), centre = high - low, (low + high) / 2
    if label == 0:
        if rng.random() < 0.3:  # dotted
            return [*strokes, centre + _line((0.0, -0.02), (0.0, 0.02)) * h]
        angle = rng.uniform(math.pi / 4, math.pi / 2) * rng.choice([1, -1])  # from a diagonal to upright
        reach = rng.uniform(0.45, 0.65) * np.array([w * 1.6, h])
        offset = np.array([math.cos(angle), -math.sin(angle)]) * reach
        return [*strokes, np.stack([centre - offset, centre + offset])]
    if label == 1:
        extras = []
        top = np.array([low[0] + w / 2, low[1]])
        if rng.random() < 0.7:
            extras.append(np.stack([top + [-rng.uniform(0.15, 0.4) * h, rng.uniform(0.1, 0.35) * h], top]))
        if not extras or rng.random() < 0.4:
            bottom = np.array([low[0] + w / 2, high[1]])
            half = rng.uniform(0.12, 0.25) * h
            extras.append(np.stack([bottom - [half, 0], bottom + [half, 0]]))
        return [*strokes, *extras]
    if label == 7:
        y = low[1] + rng.uniform(0.4, 0.6) * h
        return [*strokes, np.array([[centre[0] - 0.3 * w, y], [centre[0] + 0.35 * w, y]])]
    return strokes


def _resample(stroke: np.ndarray, spacing: float) -> np.ndarray:
    """Points every `spacing` along the stroke, as a pointer reports them."""
    length = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(stroke, axis=0), axis=1))])
    if length[-1] <= spacing:
        return stroke
    at = np.linspace(0, length[-1], int(length[-1] / spacing) + 2)
    return np.stack([np.interp(at, length, stroke[:, 0]), np.interp(at, length, stroke[:, 1])], 1)


def _write(strokes: list[np.ndarray], rng: np.random.Generator) -> list[list[list[float]]]:
    """Place a digit on the canvas as a writer would: slant, tilt, aspect, size, place, shaky points."""
    low, high = _box(strokes)
    centre, height = (low + high) / 2, max(float(high[1] - low[1]), 1e-6)
    angle, slant = rng.normal(0, 0.1), rng.normal(0.1, 0.2)  # radians; writers lean right more than left
    aspect = math.exp(rng.normal(0, 0.15))
    rotate = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    matrix = rotate @ np.array([[aspect, -slant], [0, 1 / aspect]])
    size = rng.uniform(80, 240)
    where = rng.uniform(size / 2 + 5, CANVAS_SIZE - size / 2 - 5, 2)
    jitter = rng.uniform(0, 0.012) * size
    order = rng.permutation(len(strokes))  # stroke order and direction: invisible once rendered, kept honest
    out = []
    for i in order:
        s = _resample(strokes[i], spacing=height / 30)
        s = s[::-1] if rng.random() < 0.5 else s
        s = ((s - centre) / height) @ matrix.T * size + where + rng.normal(0, jitter, s.shape)
        out.append(np.round(np.clip(s, 0, CANVAS_SIZE - 1), 1).tolist())
    return out


def stroke_digit(rng: np.random.Generator) -> tuple[int, list]:
    """One digit written in stroke space: (label, canvas strokes)."""
    if rng.random() < TEMPLATE_SHARE:
        templates = _templates()
        label, strokes = templates[rng.integers(len(templates))]
        if label == 0:
            strokes = _with_variant(0, strokes, rng) if rng.random() < 0.6 else strokes
    else:
        bank = font_digits()
        label, strokes = bank[rng.integers(len(bank))]
        if label in (0, 1, 7) and rng.random() < VARIANT_SHARE:
            strokes = _with_variant(label, strokes, rng)
    return label, _write(strokes, rng)


def stroke_digit_images(n: int, seed: int = 0, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`n` stroke-space digits rendered as model inputs: (uint8 (n, 28, 28), int64 labels); same seed, same set."""

    def compute() -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        images, labels = np.zeros((n, MNIST_SIZE, MNIST_SIZE), np.uint8), np.zeros(n, np.uint8)
        done = 0
        while done < n:
            label, strokes = stroke_digit(rng)
            try:
                images[done] = strokes_to_input(strokes, Brush(relative_width=float(rng.uniform(*PEN_WIDTHS))))
            except DrawingError:  # too many points after resampling: write another
                continue
            labels[done] = label
            done += 1
        return {"images": images, "labels": labels}

    arrays = _cached(cache_dir, f"stroke-digits-{n}-{seed}", compute)
    return arrays["images"], arrays["labels"].astype(np.int64)


@lru_cache(maxsize=1)
def _code_digest() -> str:
    """A digest of the code that draws the cached images: this module and the preprocessing it renders with."""
    from digitlib import preprocess

    sources = (Path(__file__), Path(preprocess.__file__))
    return hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:8]


def _cached(cache_dir: Path | None, name: str, compute) -> dict[str, np.ndarray]:
    """`compute()`'s arrays, kept in `cache_dir`/`name`-<code digest>.npz when a folder is given."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{name}-{_code_digest()}.npz"
    if path.is_file():
        try:
            with np.load(path) as stored:
                return dict(stored)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # a torn or foreign file: compute it again
            pass
    arrays = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as f:
        np.savez(f, **arrays)
    temporary.replace(path)  # whole files only: a run killed mid-write leaves no torn cache
    return arrays
