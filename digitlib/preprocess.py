"""The one path from a drawing (strokes on the canvas) to the model's 28x28 input.

Used by the dashboard, by `eval-drawings` and by training on feedback alike. It follows how
MNIST was made: crop to the ink, scale to fit a 20x20 box keeping the aspect ratio
(anti-aliased), then place in 28x28 with the centre of mass at the centre.

Strokes are rendered from their recorded points (not from canvas pixels), with a brush whose
width follows the size of the drawing, so a small and a large drawing of the same digit give
the same MNIST-like stroke thickness.

The models' input normalisation (`standardise`, MNIST's mean and std) is written once here
too: the trainer, `LoadedModel` and the exported ONNX graph all call it.

numpy and Pillow only: the dashboard kernel imports this and must not load torch. Training
and evaluation turn the uint8 arrays into tensors at their own edge.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CANVAS_SIZE = 280  # the dashboard's canvas and the recorded drawings, in pixels
MNIST_BOX = 20  # MNIST digits fit a 20x20 box inside 28x28
MNIST_SIZE = 28
# Mean and standard deviation of MNIST's training pixels (intensities 0-1): the models' input scale.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

# Limits that refuse absurd input (a hostile browser, a runaway touch screen).
MAX_STROKES = 50
MAX_POINTS = 5_000
COORD_MARGIN = CANVAS_SIZE  # points may lie this far outside the canvas, no further

Stroke = Sequence[Sequence[float]]


class DrawingError(ValueError):
    """A drawing that cannot become a model input: empty, malformed or absurd."""


class BatchDrawingError(DrawingError):
    """A drawing of a batch that cannot be rendered; `index` says which (0-based), `reason` why."""

    def __init__(self, index: int, reason: DrawingError):
        super().__init__(f"drawing {index}: {reason}")
        self.index, self.reason = index, reason


@dataclass(frozen=True)
class Brush:
    """How strokes are inked: the dashboard draws with it and the model input is rendered with it.

    `relative_width` is the pen width as a fraction of the drawing's larger side, the rule
    that gives MNIST-like thickness at any drawing size; `display_width` is what the visitor
    sees on the canvas while drawing.
    """

    relative_width: float = 0.15
    min_width: float = 2.0  # canvas px: a tiny drawing still gets visible ink
    display_width: float = 18.0
    colour: str = "white"
    background: str = "black"

    def width_for(self, extent: float) -> float:
        return max(self.min_width, self.relative_width * extent)


DEFAULT_BRUSH = Brush()


def validate_strokes(strokes, canvas_size: int = CANVAS_SIZE) -> list[np.ndarray]:
    """Check a drawing and return its strokes as float arrays of shape (points, 2).

    Raises DrawingError for an empty drawing, malformed points, non-finite or far-off
    coordinates, or more strokes or points than a person draws for one digit.
    """
    if not isinstance(strokes, list | tuple):
        raise DrawingError(f"strokes must be a list of strokes, not {type(strokes).__name__}")
    if len(strokes) > MAX_STROKES:
        raise DrawingError(f"{len(strokes)} strokes: at most {MAX_STROKES} per drawing")
    arrays, total = [], 0
    for i, stroke in enumerate(strokes):
        try:
            points = np.asarray(stroke, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise DrawingError(f"stroke {i}: points must be [x, y] numbers ({e})") from None
        if points.size == 0:
            continue
        if points.ndim != 2 or points.shape[1] != 2:
            raise DrawingError(f"stroke {i}: points must be [x, y] pairs, got shape {points.shape}")
        total += len(points)
        if total > MAX_POINTS:
            raise DrawingError(f"more than {MAX_POINTS} points: at most that per drawing")
        if not np.isfinite(points).all():
            raise DrawingError(f"stroke {i}: coordinates must be finite numbers")
        if (points < -COORD_MARGIN).any() or (points > canvas_size + COORD_MARGIN).any():
            raise DrawingError(f"stroke {i}: coordinates far outside the {canvas_size}x{canvas_size} canvas")
        arrays.append(points)
    if not arrays:
        raise DrawingError("the drawing is empty: draw a digit first")
    return arrays


def render_strokes(strokes: list[np.ndarray], brush: Brush = DEFAULT_BRUSH, supersample: int = 2) -> np.ndarray:
    """Ink the strokes on a black image just large enough for them; uint8 (h, w).

    The brush width follows the drawing's larger side (brush.width_for); joints and ends
    are round, as a pen's.
    """
    points = np.concatenate(strokes)
    low, high = points.min(0), points.max(0)
    width = brush.width_for(float((high - low).max()))
    pad = width / 2 + 1
    # Work at `supersample` times a scale where the drawing's larger side is ~100 px: cheap
    # and the same whatever the canvas size.
    scale = supersample * 100 / max(float((high - low).max()) + 2 * pad, 1e-6)
    size = np.ceil((high - low + 2 * pad) * scale).astype(int) + 1
    image = Image.new("L", (int(size[0]), int(size[1])), 0)
    draw = ImageDraw.Draw(image)
    for stroke in strokes:
        _ink(draw, (stroke - low + pad) * scale, max(1, round(width * scale)))
    return np.asarray(image)


def _ink(draw: ImageDraw.ImageDraw, points: np.ndarray, width: int) -> None:
    """One stroke with round joints and round ends, as a pen draws it."""
    xy = [tuple(p) for p in points]
    if len(xy) > 1:
        draw.line(xy, fill=255, width=width, joint="curve")
    r = width / 2
    for x, y in (xy[0], xy[-1]):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)


def to_mnist_layout(image: np.ndarray) -> np.ndarray:
    """White-on-black image of any size -> 28x28 uint8 laid out as MNIST digits are."""
    # The inked rows and columns (cheaper than np.nonzero of every pixel: 0.02 ms against 0.13).
    rows, cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
    if len(rows) == 0:
        raise DrawingError("the drawing is empty: draw a digit first")
    crop = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    factor = MNIST_BOX / max(h, w)
    new_w, new_h = max(1, round(w * factor)), max(1, round(h * factor))
    small = np.asarray(Image.fromarray(crop).resize((new_w, new_h), Image.Resampling.LANCZOS), dtype=np.float64)
    small = np.clip(small, 0, 255)
    mass = small.sum()
    cy = (small.sum(1) * np.arange(new_h)).sum() / mass if mass else new_h / 2
    cx = (small.sum(0) * np.arange(new_w)).sum() / mass if mass else new_w / 2
    top = min(max(round(MNIST_SIZE / 2 - 0.5 - cy), 0), MNIST_SIZE - new_h)
    left = min(max(round(MNIST_SIZE / 2 - 0.5 - cx), 0), MNIST_SIZE - new_w)
    out = np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.uint8)
    out[top : top + new_h, left : left + new_w] = np.round(small).astype(np.uint8)
    return out


def strokes_to_input(strokes, brush: Brush = DEFAULT_BRUSH, canvas_size: int = CANVAS_SIZE) -> np.ndarray:
    """The whole path: strokes in canvas pixels -> uint8 (28, 28) numpy array for the model."""
    arrays = validate_strokes(strokes, canvas_size)
    return to_mnist_layout(render_strokes(arrays, brush))


def render_drawings(
    drawings: Iterable, brush: Brush = DEFAULT_BRUSH, *, skip_bad: bool = False
) -> tuple[np.ndarray, list[int]]:
    """Many drawings (each a list of strokes) -> (uint8 (N, 28, 28), the positions that rendered).

    A drawing that cannot be rendered raises BatchDrawingError naming its position, or with
    `skip_bad` is left out (its position is then missing from the list).
    """
    images, rendered = [], []
    for index, strokes in enumerate(drawings):
        try:
            images.append(strokes_to_input(strokes, brush))
        except DrawingError as e:
            if not skip_bad:
                raise BatchDrawingError(index, e) from None
            continue
        rendered.append(index)
    stacked = np.stack(images) if images else np.zeros((0, MNIST_SIZE, MNIST_SIZE), dtype=np.uint8)
    return stacked, rendered


def standardise(unit_images, mean: float = MNIST_MEAN, std: float = MNIST_STD):
    """Intensities in 0-1 -> the models' input scale: (x - mean) / std.

    Plain arithmetic, so numpy arrays, torch tensors and the traced ONNX graph take the same step;
    a model's metadata records the mean and std it was trained with.
    """
    return (unit_images - mean) / std


def resize_canvas_directly(strokes, brush: Brush = DEFAULT_BRUSH, canvas_size: int = CANVAS_SIZE) -> np.ndarray:
    """The seed apps' way (whole canvas shrunk to 28x28), kept only as a baseline to compare."""
    arrays = validate_strokes(strokes, canvas_size)
    image = Image.new("L", (canvas_size, canvas_size), 0)
    draw = ImageDraw.Draw(image)
    for stroke in arrays:
        _ink(draw, stroke, round(brush.display_width))
    small = image.resize((MNIST_SIZE, MNIST_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(small).copy()


__all__ = [
    "BatchDrawingError",
    "Brush",
    "DEFAULT_BRUSH",
    "DrawingError",
    "MNIST_MEAN",
    "MNIST_STD",
    "render_drawings",
    "render_strokes",
    "standardise",
    "strokes_to_input",
    "to_mnist_layout",
    "validate_strokes",
]
