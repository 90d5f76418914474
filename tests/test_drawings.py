"""Recorded drawings (digitlib.drawings): reading a JSON-lines file, rendering digits, evaluation per source."""

import json

import numpy as np
import pytest
import torch
from helpers import SEVEN

from digitlib.dataset import DataError
from digitlib.drawings import Drawing, drawings_to_digits, evaluate_drawings, load_drawings
from digitlib.modeling.checkpoint import LoadedModel
from digitlib.preprocess import strokes_to_input


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_drawings_names_the_bad_line(tmp_path):
    good = {"label": 7, "strokes": SEVEN, "source": "a"}
    path = write_jsonl(tmp_path / "d.jsonl", [good, {**good, "label": 12}])
    with pytest.raises(DataError, match="line 2: label 12"):
        load_drawings(path)
    (tmp_path / "broken.jsonl").write_text('{"label": 1, "strokes": [[[1,')
    with pytest.raises(DataError, match="line 1"):
        load_drawings(tmp_path / "broken.jsonl")
    with pytest.raises(DataError, match="no such drawings file"):
        load_drawings(tmp_path / "missing.jsonl")


class AlwaysSeven(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.one_hot(torch.full((len(x),), 7), 10).float() * 10


def test_evaluate_drawings_per_source(tmp_path):
    rows = [
        {"label": 7, "strokes": SEVEN, "source": "a"},
        {"label": 7, "strokes": SEVEN, "source": "b"},
        {"label": 1, "strokes": [[[140, 40], [140, 240]]], "source": "b"},
    ]
    model = LoadedModel(AlwaysSeven(), {"normalisation": {"mean": 0.0, "std": 1.0}})
    model.model.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))  # gives it a device
    result = evaluate_drawings(model, load_drawings(write_jsonl(tmp_path / "d.jsonl", rows))).summary()
    assert result["n"] == 3 and result["accuracy"] == pytest.approx(2 / 3)
    assert result["per_source"] == {"a": {"accuracy": 1.0, "n": 1}, "b": {"accuracy": 0.5, "n": 2}}


def test_drawings_to_digits_names_the_drawing_that_cannot_be_rendered():
    drawings = [Drawing(SEVEN, 7, "site-a", "w1"), Drawing([[[5, 5, 5]]], 1, "site-b", "w2")]
    with pytest.raises(DataError, match=r"drawing 1 \(site-b w2\): stroke 0: points must be \[x, y\] pairs"):
        drawings_to_digits(drawings)
    digits = drawings_to_digits(drawings[:1])
    assert digits.labels.tolist() == [7] and digits.images.dtype == torch.uint8
    assert np.array_equal(digits.images[0].numpy(), strokes_to_input(SEVEN))
