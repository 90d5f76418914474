"""Pen-like training digits: MNIST re-drawn with a round pen, and digits written in stroke space."""

from __future__ import annotations

import numpy as np
import pytest

from digitlib import pen_style
from digitlib.preprocess import MNIST_BOX, MNIST_SIZE


def ink_box(image: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(image)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def test_redrawn_digit_follows_the_original_in_mnist_layout(mnist_train):
    original = mnist_train.images[0].numpy()  # a 5
    redrawn = pen_style.redraw_digit(original, 0.15)
    assert redrawn.shape == (MNIST_SIZE, MNIST_SIZE) and redrawn.dtype == np.uint8
    assert max(ink_box(redrawn)) == MNIST_BOX  # scaled into MNIST's 20-pixel box, as drawings are
    ink_a, ink_b = original > 100, redrawn > 100
    assert (ink_a & ink_b).sum() / (ink_a | ink_b).sum() > 0.5  # the same digit, not another shape
    rows, cols = np.nonzero(redrawn)
    weights = redrawn[rows, cols].astype(float)
    assert abs(np.average(rows, weights=weights) - 13.5) < 1.5 and abs(np.average(cols, weights=weights) - 13.5) < 1.5


def test_pen_width_sets_the_ink_and_is_the_same_along_the_stroke(mnist_train):
    original = mnist_train.images[1].numpy()
    thin, thick = pen_style.redraw_digit(original, 0.08), pen_style.redraw_digit(original, 0.2)
    assert (thick > 127).sum() > 1.5 * (thin > 127).sum()


def test_an_image_without_ink_stays_as_it_is():
    blank = np.zeros((MNIST_SIZE, MNIST_SIZE), np.uint8)
    assert not pen_style.redraw_digit(blank, 0.15).any()


def test_redraw_images_is_seeded_and_cached(mnist_train, tmp_path, monkeypatch):
    images = mnist_train.images[:20].numpy()
    first = pen_style.redraw_images(images, seed=3, cache_dir=tmp_path)
    assert first.shape == images.shape
    assert np.array_equal(first, pen_style.redraw_images(images, seed=3))  # same seed, same widths
    assert not np.array_equal(first, pen_style.redraw_images(images, seed=4))

    def fail(*_):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(pen_style, "redraw_digit", fail)
    assert np.array_equal(first, pen_style.redraw_images(images, seed=3, cache_dir=tmp_path))


def test_edited_drawing_code_does_not_reuse_the_cache(mnist_train, tmp_path, monkeypatch):
    images = mnist_train.images[:5].numpy()
    pen_style.redraw_images(images, seed=0, cache_dir=tmp_path)
    monkeypatch.setattr(pen_style, "_code_digest", lambda: "edited0")
    calls = []
    real = pen_style.redraw_digit
    monkeypatch.setattr(pen_style, "redraw_digit", lambda *a: calls.append(1) or real(*a))
    pen_style.redraw_images(images, seed=0, cache_dir=tmp_path)
    assert len(calls) == len(images)  # drawn again, not read from the old code's file
    assert len(list(tmp_path.glob("redraw-*.npz"))) == 2


def test_a_torn_cache_file_is_computed_again(mnist_train, tmp_path):
    images = mnist_train.images[:5].numpy()
    expected = pen_style.redraw_images(images, seed=0, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("redraw-*.npz")
    cached.write_bytes(cached.read_bytes()[:100])
    assert np.array_equal(expected, pen_style.redraw_images(images, seed=0, cache_dir=tmp_path))


def test_stroke_digits_cover_every_digit_as_model_inputs(tmp_path):
    images, labels = pen_style.stroke_digit_images(300, seed=1, cache_dir=tmp_path)
    assert images.shape == (300, MNIST_SIZE, MNIST_SIZE) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
    assert all(max(ink_box(im)) == MNIST_BOX for im in images)  # the dashboard's layout
    again_images, again_labels = pen_style.stroke_digit_images(300, seed=1)  # recomputed, not cached
    assert np.array_equal(images, again_images) and np.array_equal(labels, again_labels)


def test_every_font_has_all_ten_digits():
    bank = pen_style.font_digits()
    assert len(bank) == 10 * len(pen_style.DIGIT_FONTS)
    assert all(strokes and all(s.shape[1] == 2 for s in strokes) for _, strokes in bank)


@pytest.mark.parametrize("label", [0, 1, 7])
def test_written_variants_add_a_stroke(label):
    rng = np.random.default_rng(0)
    _, strokes = next(item for item in pen_style.font_digits() if item[0] == label)
    varied = pen_style._with_variant(label, strokes, rng)
    assert len(varied) > len(strokes)
    low, high = pen_style._box(strokes)
    added = np.concatenate(varied[len(strokes) :])
    centre = (low + high) / 2
    if label == 0:  # a slash or dot through the middle of the ring
        assert np.linalg.norm(added.mean(0) - centre) < 0.2 * (high - low).max()


def test_written_digits_land_on_the_canvas_shuffled_but_whole():
    rng = np.random.default_rng(5)
    for _ in range(50):
        label, strokes = pen_style.stroke_digit(rng)
        points = np.concatenate([np.asarray(s) for s in strokes])
        assert 0 <= label <= 9
        assert points.min() >= 0 and points.max() <= 279
        assert np.ptp(points, 0).max() > 40  # a digit, not a dot
