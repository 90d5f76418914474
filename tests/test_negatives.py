"""Generated non-digit drawings: strokes on the canvas, rendered by the dashboard's one path."""

from __future__ import annotations

import numpy as np
import pytest

from digitlib import negatives
from digitlib.preprocess import CANVAS_SIZE, strokes_to_input, validate_strokes


def test_the_same_seed_gives_the_same_images_and_another_seed_others():
    a, b, c = (
        negatives.negative_images(40, seed=3),
        negatives.negative_images(40, seed=3),
        negatives.negative_images(40, 4),
    )
    assert a.shape == (40, 28, 28) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert (a.reshape(40, -1).max(1) > 0).all()  # every one has ink


@pytest.mark.parametrize("kind", negatives.KINDS)
def test_every_kind_is_strokes_inside_the_canvas_that_the_dashboard_path_renders(kind):
    rng = np.random.default_rng(0)
    for _ in range(30):
        got, strokes = negatives.negative_strokes(rng, kind)
        assert got == kind
        arrays = validate_strokes(strokes)  # the dashboard's own check
        points = np.concatenate(arrays)
        assert points.min() >= 0 and points.max() <= CANVAS_SIZE - 1
        assert strokes_to_input(strokes).max() > 0


def test_no_glyph_is_a_digit_or_a_digit_look_alike():
    names = [name for name, _ in negatives.glyph_bank()]
    keys = {name.split(":", 1)[1] for name in names if not name.startswith("markers:")}
    assert not keys & set("0123456789OoQlIZzSsBbGgq$|!/-")
    assert "greek:U" not in names and "cyrillic:V" not in names  # an Omicron, a Ve
    assert "greek:V" not in names and "symbolic:H" not in names  # plain rings: a 0
    for _, strokes in negatives.glyph_bank():  # nothing tall and thin (a 1 once scaled), no ring (a 0)
        width, height = np.ptp(np.concatenate(strokes), 0)
        assert height <= negatives.TALL * max(width, 1e-6)
        assert not negatives.is_ring(strokes)
    assert len(names) > 600
    # Symbols no digit resembles are there too, in every text font.
    assert {"futural:?", "futural:#", "futural:%", "futural:&", "futural:@", "cyrillic:?"} <= set(names)


def test_rings_read_as_a_zero_but_squares_triangles_and_open_curves_do_not():
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]], float)
    assert negatives.is_ring([negatives._circle(60) * [3, 1]])  # an oval
    assert negatives.is_ring([negatives._circle(7)])  # a hexagon
    assert not negatives.is_ring([square])
    assert not negatives.is_ring([negatives._circle(4)])  # a triangle
    assert not negatives.is_ring([negatives._circle(60, turns=0.8)])  # a C


def test_a_thin_upright_bar_reads_as_a_one_and_a_lying_or_wide_one_does_not():
    def bar(angle_degrees, width=0.0):
        t = np.radians(angle_degrees)
        line = np.outer(np.linspace(-100, 100, 30), [np.sin(t), np.cos(t)]) + 140
        return [line.tolist()] + ([(line + [width, 0]).tolist()] if width else [])

    assert negatives.reads_as_a_one(bar(0)) and negatives.reads_as_a_one(bar(30))
    assert not negatives.reads_as_a_one(bar(90)) and not negatives.reads_as_a_one(bar(60))
    assert not negatives.reads_as_a_one(bar(0, width=120))  # two far-apart bars: an 11 at most, wide
    rng = np.random.default_rng(2)
    for kind in negatives.KINDS:
        for _ in range(25):
            assert not negatives.reads_as_a_one(negatives.negative_strokes(rng, kind)[1])


def test_validation_glyphs_are_never_trained_on_and_held_out_fonts_neither():
    train = {name for name, _ in negatives.glyphs("train")}
    validation = {name for name, _ in negatives.glyphs("validation")}
    held_out = {name for name, _ in negatives.glyphs("held_out")}
    assert train and validation and not train & validation
    assert len(train) + len(validation) == len(negatives.glyph_bank())
    fonts = {name.split(":")[0] for name in held_out}
    assert fonts == set(negatives.HELD_OUT_FONTS) and len(held_out) > 150
    assert not fonts & {name.split(":")[0] for name in train | validation}
    images = negatives.negative_images(20, seed=5, part="held_out")
    assert images.shape == (20, 28, 28) and (images.reshape(20, -1).max(1) > 0).all()
    with pytest.raises(ValueError, match="unknown part"):
        negatives.glyphs("test")
    with pytest.raises(ValueError, match="unknown kind"):
        negatives.negative_strokes(rng=np.random.default_rng(0), kind="digit")
