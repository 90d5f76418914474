"""Drawings that are not digits, generated as strokes, to teach and tune "not a digit".

Every negative is made as pen strokes on the 280x280 canvas and rendered by
preprocess.strokes_to_input, the dashboard's one path, so the model sees what a visitor's
drawing becomes. Sources (`KINDS`): glyphs of the Hershey stroke fonts (Latin, Greek,
Cyrillic, Japanese, symbol fonts, and symbols such as # % & @ ? of the text fonts), procedural
shapes (stars, crosses, arrows, hearts, spirals, triangles, squares, grids, waves...) and
scribbles (random walks). Each gets a random slant, rotation, aspect, size, place, jitter and
pen width.

What reads as a digit is left out, since a visitor's digit must not be answered "not a
digit": glyphs at digit-like keys, round rings (a 0), anything tall and thin once placed (a 1),
polygons with five or more sides and two-line grids (a 0).

Whole fonts (`HELD_OUT_FONTS`) are never trained on nor fitted on: the "generated, held-out"
check of families the model has not seen. Nothing here is tuned on ../shared/data/non-digits
(a development set, only measured on).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from digitlib.preprocess import CANVAS_SIZE, Brush, DrawingError, strokes_to_input

# Keys (ASCII in every Hershey font) whose glyphs are, or can look like, digits or a lone bar:
# 0-9, O o Q D (0), l I i j J | ! / \ ( ) [ ] { } ' ` , . - _ (1), S s (5), Z z (2), b G (6),
# g q (9), B (8), T t (7), and dots/colons that vanish at 28x28. Left out in every font.
DIGIT_LIKE = set("0123456789OoQDlIiJj|!/\\()[]{}'`,.-_:;\"SsZzbGgqBTt ~^+$")
# Symbols of the text fonts that no digit resembles (the fonts' other punctuation is a bar, a dot or a bracket).
SYMBOL_KEYS = "#%&@?<>*="
LETTER_FONTS = (
    "futural",
    "futuram",
    "cursive",
    "scripts",
    "timesr",
    "rowmans",
    "greek",
    "greekc",
    "cyrillic",
    "cyrilc_1",
)
# Symbol fonts hold digits and punctuation at the same keys as text fonts: only letters' keys.
SYMBOL_FONTS = ("astrology", "meteorology", "music", "symbolic", "mathlow", "mathupp", "japanese")
# Families never trained on (other hands of Greek and Latin): only measured on.
HELD_OUT_FONTS = ("greeks", "timesg", "gothgrt", "gothiceng", "scriptc", "timesib")
# Keys whose glyph in that font looks like a digit (checked by eye): Greek U is an Omicron (0),
# Cyrillic V and v are a Ve (8).
FONT_DIGIT_LIKE = {"greek": "U", "greekc": "U", "cyrillic": "Vv", "cyrilc_1": "Vv"}
TALL = 3.0  # a glyph this many times taller than wide reads as a 1 once scaled to MNIST's box
RING = 0.07  # relative spread of the distance from the centre below which points make a ring (a 0); a square: 0.11
# Marker glyphs that are a circle or a dot (a 0); checked by eye (see tests/test_negatives.py).
MARKERS = "BCDEFGHIJKLMNOP"
KINDS = ("glyph", "word", "shape", "scribble")
KIND_WEIGHTS = (0.45, 0.1, 0.3, 0.15)
SHAPES = (
    "star",
    "cross",
    "plus",
    "arrow",
    "heart",
    "spiral",
    "polygon",
    "grid",
    "wave",
    "zigzag",
    "smiley",
    "check",
    "hash",
)


def _keys(font, name: str) -> list[str]:
    if name == "markers":
        return list(MARKERS)
    if name == "japanese":
        return [k for k in font.all_glyphs if not k.isascii()]
    letters = [k for k in font.all_glyphs if k.isascii() and k.isalpha()]
    return letters + ([k for k in SYMBOL_KEYS if k in font.all_glyphs] if name not in SYMBOL_FONTS else [])


def is_ring(strokes: list[np.ndarray]) -> bool:
    """Points all about as far from their centre: a circle or an oval ring, which reads as a 0."""
    points = np.concatenate([_resample(s, spacing=max(float(np.ptp(s, 0).max()), 1e-6) / 40) for s in strokes])
    points = (points - (points.min(0) + points.max(0)) / 2) / np.maximum(np.ptp(points, 0) / 2, 1e-6)
    radius = np.linalg.norm(points, axis=1)
    around = np.unique(((np.arctan2(points[:, 1], points[:, 0]) + np.pi) / (2 * np.pi) * 16).astype(int) % 16)
    return bool(radius.std() <= RING * radius.mean() and len(around) == 16)  # closed all round, not a C or a U


@lru_cache(maxsize=2)
def glyph_bank(held_out: bool = False) -> list[tuple[str, list[np.ndarray]]]:
    """(name, strokes) of every usable Hershey glyph of the training fonts (or of HELD_OUT_FONTS),
    y pointing down, as float arrays."""
    from HersheyFonts import HersheyFonts

    font = HersheyFonts()
    bank = []
    for name in HELD_OUT_FONTS if held_out else LETTER_FONTS + SYMBOL_FONTS + ("markers",):
        font.load_default_font(name)
        for key in _keys(font, name):
            if (key in DIGIT_LIKE and name != "markers") or key in FONT_DIGIT_LIKE.get(name, ""):
                continue
            strokes = [np.asarray(s, float) for s in font.strokes_for_text(key) if len(s) >= 2]
            if not strokes:
                continue
            width, height = np.ptp(np.concatenate(strokes), 0)
            if height <= TALL * max(width, 1e-6) and not is_ring(strokes):
                bank.append((f"{name}:{key}", strokes))
    return bank


PARTS = ("train", "validation", "held_out")


def glyphs(part: str) -> list[tuple[str, list[np.ndarray]]]:
    """The glyphs of one part: every fifth glyph of the training fonts is kept for validation
    (fitting the calibration), never trained on; "held_out" is the fonts never trained on nor fitted on."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; choose from {PARTS}")
    if part == "held_out":
        return glyph_bank(held_out=True)
    return [g for i, g in enumerate(glyph_bank()) if (i % 5 == 0) == (part == "validation")]


def _word(rng: np.random.Generator, bank) -> list[np.ndarray]:
    """Two or three glyphs side by side: a short word in another alphabet."""
    out, x = [], 0.0
    for _ in range(rng.integers(2, 4)):
        _, strokes = bank[rng.integers(len(bank))]
        points = np.concatenate(strokes)
        shift = x - points[:, 0].min()
        out += [s + [shift, 0] for s in strokes]
        x += np.ptp(points[:, 0]) + rng.uniform(2, 6)
    return out


def _circle(n: int, start: float = 0.0, turns: float = 1.0) -> np.ndarray:
    t = start + np.linspace(0, 2 * np.pi * turns, n)
    return np.stack([np.cos(t), np.sin(t)], 1)


def _shape(rng: np.random.Generator) -> list[np.ndarray]:
    kind = SHAPES[rng.integers(len(SHAPES))]
    if kind == "star":
        k = int(rng.integers(5, 9))
        step = int(rng.integers(2, (k + 1) // 2 + 1)) if k > 4 else 2
        t = np.pi / 2 + 2 * np.pi * step * np.arange(k + 1) / k
        if math.gcd(k, step) != 1:  # not one closed path: draw outline points instead
            radius = np.where(np.arange(2 * k + 1) % 2 == 0, 1.0, rng.uniform(0.3, 0.5))  # rounder reads as a 0
            t = np.pi / 2 + np.pi * np.arange(2 * k + 1) / k
            return [np.stack([radius * np.cos(t), radius * np.sin(t)], 1)]
        return [np.stack([np.cos(t), np.sin(t)], 1)]
    if kind in ("cross", "plus"):
        a = np.array([[-1, -1], [1, 1]], float) if kind == "cross" else np.array([[0, -1], [0, 1]], float)
        b = np.array([[1, -1], [-1, 1]], float) if kind == "cross" else np.array([[-1, 0], [1, 0]], float)
        return [a, b]
    if kind == "arrow":
        head = rng.uniform(0.3, 0.6)
        return [np.array([[-1, 0], [1, 0]], float), np.array([[1 - head, -head], [1, 0], [1 - head, head]])]
    if kind == "heart":
        t = np.linspace(0, 2 * np.pi, 60)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [np.stack([x, y], 1) / 16]
    if kind == "spiral":
        turns = rng.uniform(2.5, 4)  # fewer turns read as a 0 drawn twice round
        t = np.linspace(0, 2 * np.pi * turns, 120)
        r = t / t[-1]
        return [np.stack([r * np.cos(t), r * np.sin(t) * rng.choice([-1, 1])], 1)]
    if kind == "polygon":  # triangles and squares: five sides or more read as a 0
        k = int(rng.integers(3, 5))
        return [_circle(k + 1, rng.uniform(0, np.pi), 1.0)]
    if kind in ("grid", "hash"):
        lines = int(rng.integers(3, 5))  # two lines each way are only a square (polygons draw those)
        ticks = np.linspace(-1, 1, lines)
        strokes = [np.array([[x, -1], [x, 1]]) for x in ticks] + [np.array([[-1, y], [1, y]]) for y in ticks]
        return strokes if kind == "grid" else [s * [0.6, 1] if i < lines else s for i, s in enumerate(strokes)]
    if kind == "wave":
        x = np.linspace(-1, 1, 60)
        return [np.stack([x, 0.4 * np.sin(x * np.pi * rng.uniform(2, 5))], 1)]
    if kind == "zigzag":
        k = int(rng.integers(4, 9))
        return [np.stack([np.linspace(-1, 1, k), np.where(np.arange(k) % 2, 0.5, -0.5)], 1)]
    if kind == "smiley":
        face = _circle(50)
        eyes = [np.array([[-0.35, -0.35], [-0.33, -0.2]]), np.array([[0.35, -0.35], [0.33, -0.2]])]
        t = np.linspace(0.2 * np.pi, 0.8 * np.pi, 20)
        return [face, *eyes, np.stack([0.55 * np.cos(t), 0.55 * np.sin(t)], 1)]
    # check mark
    return [np.array([[-1, 0], [-0.4, 0.7], [1, -1]], float)]


def _scribble(rng: np.random.Generator) -> list[np.ndarray]:
    """Random walks with momentum: one to four strokes of a restless pen."""
    strokes = []
    for _ in range(rng.integers(1, 5)):
        n = int(rng.integers(15, 80))
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, rng.uniform(0.2, 0.9), n))
        steps = np.stack([np.cos(heading), np.sin(heading)], 1) * rng.uniform(0.5, 1.5, (n, 1))
        strokes.append(np.cumsum(steps, 0) + rng.normal(0, 5, 2))
    return strokes


def _place(strokes: list[np.ndarray], rng: np.random.Generator) -> list[list[list[float]]]:
    """Random slant, rotation, aspect, size, place and jitter, then pointer-like sampling on the canvas."""
    points = np.concatenate(strokes)
    centre = (points.min(0) + points.max(0)) / 2
    extent = max(float(np.ptp(points, 0).max()), 1e-6)
    angle = rng.normal(0, 0.25)
    slant = rng.normal(0, 0.25)
    aspect = np.exp(rng.normal(0, 0.2))
    matrix = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    matrix = matrix @ np.array([[aspect, slant], [0, 1 / aspect]])
    size = rng.uniform(70, 230)
    where = rng.uniform(size / 2 + 5, CANVAS_SIZE - size / 2 - 5, 2)
    jitter = rng.uniform(0, 0.015) * size
    out = []
    for s in strokes:
        s = _resample(s, spacing=extent / 40)
        s = ((s - centre) / extent) @ matrix.T * size + where + rng.normal(0, jitter, s.shape)
        out.append(np.round(np.clip(s, 0, CANVAS_SIZE - 1), 1).tolist())
    return out


def _resample(stroke: np.ndarray, spacing: float) -> np.ndarray:
    """Points every `spacing` along the stroke, as a pointer reports them while drawing."""
    seg = np.linalg.norm(np.diff(stroke, axis=0), axis=1)
    length = np.concatenate([[0], np.cumsum(seg)])
    if length[-1] <= spacing:
        return stroke
    at = np.linspace(0, length[-1], int(length[-1] / spacing) + 2)
    return np.stack([np.interp(at, length, stroke[:, 0]), np.interp(at, length, stroke[:, 1])], 1)


def reads_as_a_one(strokes) -> bool:
    """Ink that is a thin bar standing up (within 40 degrees of upright): a 1 once scaled to MNIST's box."""
    points = np.concatenate([_resample(np.asarray(s, float), spacing=2.0) for s in strokes])
    if len(points) < 3:
        return True
    variances, axes = np.linalg.eigh(np.cov(points.T))
    thin = variances[1] >= TALL**2 * max(variances[0], 1e-9)  # a uniform bar: length/width = sqrt(ratio)
    return bool(thin and abs(axes[1, 1]) >= math.cos(math.radians(40)))


def negative_strokes(rng: np.random.Generator, kind: str | None = None, part: str = "train") -> tuple[str, list]:
    """One non-digit drawing as canvas strokes, and its kind (glyph, word, shape or scribble)."""
    kind = kind or KINDS[rng.choice(len(KINDS), p=KIND_WEIGHTS)]
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
    bank = glyphs(part)
    while True:
        if kind == "glyph":
            strokes = bank[rng.integers(len(bank))][1]
        elif kind == "word":
            strokes = _word(rng, bank)
        elif kind == "shape":
            strokes = _shape(rng)
        else:
            strokes = _scribble(rng)
        placed = _place(strokes, rng)
        if not reads_as_a_one(placed):
            return kind, placed


def negative_images(n: int, seed: int = 0, part: str = "train") -> np.ndarray:
    """`n` generated non-digit drawings rendered as model inputs, uint8 (n, 28, 28); same seed, same images.

    `part` "validation" draws its glyphs from the fifth of the fonts' glyphs never trained on,
    "held_out" from the fonts never trained on (HELD_OUT_FONTS).
    """
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    done = 0
    while done < n:
        _, strokes = negative_strokes(rng, part=part)
        brush = Brush(relative_width=float(rng.uniform(0.08, 0.2)))
        try:
            images[done] = strokes_to_input(strokes, brush)
        except DrawingError:  # a degenerate drawing (too many points): draw another
            continue
        done += 1
    return images
