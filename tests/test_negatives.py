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
    assert not keys & set("0123456789OoQlIZzSsBbGgq")
    assert "greek:U" not in names and "cyrillic:V" not in names  # an Omicron, a Ve
    for _, strokes in negatives.glyph_bank():  # nothing tall and thin (a 1 once scaled)
        width, height = np.ptp(np.concatenate(strokes), 0)
        assert height <= negatives.TALL * max(width, 1e-6)
    assert len(names) > 400


def test_validation_glyphs_are_never_trained_on():
    train = {name for name, _ in negatives.glyphs("train")}
    validation = {name for name, _ in negatives.glyphs("validation")}
    assert train and validation and not train & validation
    assert len(train) + len(validation) == len(negatives.glyph_bank())
    with pytest.raises(ValueError, match="unknown part"):
        negatives.glyphs("test")
