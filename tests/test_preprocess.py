"""The one path from strokes to the model's input (digitlib.preprocess): rendering, layout, limits, batches."""

import numpy as np
import pytest
import torch
from helpers import SEVEN

from digitlib.drawings import load_drawings
from digitlib.preprocess import (
    MAX_POINTS,
    MAX_STROKES,
    MNIST_MEAN,
    MNIST_STD,
    BatchDrawingError,
    DrawingError,
    render_drawings,
    resize_canvas_directly,
    standardise,
    strokes_to_input,
    validate_strokes,
)


def centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    a = img.astype(np.float64)
    ys, xs = np.meshgrid(np.arange(28.0), np.arange(28.0), indexing="ij")
    return (a * ys).sum() / a.sum(), (a * xs).sum() / a.sum()


def test_output_is_mnist_shaped_and_centred():
    img = strokes_to_input(SEVEN)
    assert isinstance(img, np.ndarray) and img.shape == (28, 28) and img.dtype == np.uint8 and img.max() > 200
    cy, cx = centre_of_mass(img)
    assert abs(cy - 13.5) <= 0.75 and abs(cx - 13.5) <= 0.75
    rows, cols = img.nonzero()
    assert rows.max() - rows.min() + 1 == 20  # the taller side fills the 20x20 box


def test_size_and_position_do_not_matter():
    big = strokes_to_input(SEVEN)
    small = strokes_to_input([[[x / 3 + 150, y / 3 + 10] for x, y in SEVEN[0]]])
    # Same digit drawn a third of the size elsewhere: same input, same ink thickness.
    big, small = big.astype(float), small.astype(float)
    assert np.abs(big - small).mean() < 8
    assert abs(big.sum() / small.sum() - 1) < 0.1


def test_seed_apps_resize_loses_a_small_drawing():
    small = [[[x / 3 + 150, y / 3 + 10] for x, y in SEVEN[0]]]
    # Shrinking the whole canvas leaves a few faint pixels in a corner; our path does not.
    assert resize_canvas_directly(small).astype(float).sum() < strokes_to_input(small).astype(float).sum() / 3


def test_a_dot_is_a_valid_drawing():
    img = strokes_to_input([[[140, 140]]])
    assert img.sum() > 0


@pytest.mark.parametrize(
    "strokes, message",
    [
        ([], "empty"),
        ([[]], "empty"),
        ("7", "list of strokes"),
        ([[[1, 2, 3]]], r"\[x, y\] pairs"),
        ([[["a", 2]]], "numbers"),
        ([[[float("nan"), 2]]], "finite"),
        ([[[1e9, 2]]], "far outside"),
        ([[[1, 1]]] * (MAX_STROKES + 1), "strokes"),
        ([[[1, 1]] * (MAX_POINTS + 1)], "points"),
    ],
)
def test_bad_drawings_are_refused_clearly(strokes, message):
    with pytest.raises(DrawingError, match=message):
        validate_strokes(strokes)


def test_validate_returns_float_arrays():
    (points,) = validate_strokes(SEVEN)
    assert points.shape == (3, 2) and points.dtype == np.float64


def test_real_pen_digits_render(tmp_path):
    from digitlib import config

    path = config.DRAWINGS_FILE.get()
    drawings = load_drawings(path)[:50]
    assert len(drawings) == 50
    images = np.stack([strokes_to_input(d.strokes) for d in drawings])
    # Every drawing lands in the MNIST layout: a 20-pixel box, centre of mass near the centre.
    for img in images:
        rows, cols = img.nonzero()
        assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 == 20
        cy, cx = centre_of_mass(img)
        assert abs(cy - 13.5) <= 2 and abs(cx - 13.5) <= 2


ONE = [[[140, 40], [140, 240]]]


def test_a_batch_renders_each_drawing_as_the_dashboard_does():
    images, rendered = render_drawings([SEVEN, ONE])
    assert images.dtype == np.uint8 and images.shape == (2, 28, 28) and rendered == [0, 1]
    assert np.array_equal(images[0], strokes_to_input(SEVEN)) and np.array_equal(images[1], strokes_to_input(ONE))
    empty, none = render_drawings([])
    assert empty.shape == (0, 28, 28) and empty.dtype == np.uint8 and none == []


def test_a_bad_drawing_in_a_batch_is_named_by_its_position_or_skipped():
    batch = [SEVEN, [], ONE, [[["x", 1]]]]
    with pytest.raises(BatchDrawingError, match="drawing 1: the drawing is empty") as caught:
        render_drawings(batch)
    assert caught.value.index == 1 and isinstance(caught.value.reason, DrawingError)
    images, rendered = render_drawings(batch, skip_bad=True)
    assert rendered == [0, 2] and np.array_equal(images[1], strokes_to_input(ONE))


def test_standardise_is_the_same_step_for_numpy_and_torch():
    unit = np.array([0.0, MNIST_MEAN, 1.0], dtype=np.float32)
    expected = [-MNIST_MEAN / MNIST_STD, 0.0, (1 - MNIST_MEAN) / MNIST_STD]
    assert standardise(unit) == pytest.approx(expected, abs=1e-6)
    assert standardise(torch.from_numpy(unit)).tolist() == pytest.approx(expected, abs=1e-6)
    assert standardise(unit, mean=0.5, std=0.5).tolist() == pytest.approx([-1.0, 2 * MNIST_MEAN - 1, 1.0], abs=1e-6)
