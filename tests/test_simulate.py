"""Simulated visitors (digitlib.simulate): recorded drawings answered through the dashboard's predict path."""

from __future__ import annotations

import numpy as np
import pytest

from digitlib.drawings import Drawing
from digitlib.simulate import remembered_predictions, submit_drawings
from digitlib.store import FeedbackStore

ONE = [[[140, 40], [140, 240]]]
STAR = [[[140, 20], [180, 250], [40, 100], [240, 100], [100, 250], [140, 20]]]


class Model:  # predict_strokes' interface: calibrated probabilities and a not-digit output
    version, rejection_threshold = "stub-1", 0.5

    def __init__(self):
        self.calls = 0

    def predict(self, images):
        self.calls += len(images)
        return np.full((len(images), 10), 0.1), np.full(len(images), 0.8)

    def is_not_digit(self, not_digit):
        return np.asarray(not_digit) >= 0.5


def test_simulated_visitors_answer_not_a_digit_for_unlabelled_drawings(tmp_path, sqlite_url):
    store = FeedbackStore(sqlite_url, queue_file=tmp_path / "q.jsonl")
    assert submit_drawings(store, Model(), [Drawing(STAR, None, "dev"), Drawing(ONE, 1, "dev")]) == 2
    first, second = store.rows()
    assert first["not_digit"] and first["rejected"] and first["not_digit_probability"] == pytest.approx(0.8)
    assert second["true_label"] == 1 and second["rejected"] and second["session_id"] == "dev-0"
    store.dispose()


def test_remembered_predictions_ask_the_model_once_per_drawing(tmp_path, sqlite_url):
    model = Model()
    predict = remembered_predictions(model)
    store = FeedbackStore(sqlite_url, queue_file=tmp_path / "q.jsonl")
    answers = [Drawing(ONE, 1, "a"), Drawing(STAR, 2, "a")]
    assert submit_drawings(store, model, answers, predict=predict) == 2
    relabelled = [Drawing(ONE, 7, "b"), Drawing([list(map(list, ONE[0]))], 4, "b")]  # same strokes, a copy
    assert submit_drawings(store, model, relabelled, predict=predict) == 2
    assert model.calls == 2  # two distinct drawings
    rows = store.rows()
    assert [r["true_label"] for r in rows] == [1, 2, 7, 4] and rows[0]["image"] == rows[2]["image"]
    store.dispose()


def test_given_submission_ids_fix_each_drawings_side_of_the_split(tmp_path, sqlite_url):
    store = FeedbackStore(sqlite_url, queue_file=tmp_path / "q.jsonl")
    answers = [Drawing(ONE, 1, "a"), Drawing(STAR, 2, "a")]
    assert submit_drawings(store, Model(), answers, submission_ids=["drawing-0", "drawing-1"]) == 2
    assert [r["submission_id"] for r in store.rows()] == ["drawing-0", "drawing-1"]
    store.dispose()
