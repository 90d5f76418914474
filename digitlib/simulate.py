"""Simulated visitors for tests, benchmarks and demonstrations: recorded drawings answered through the dashboard.

Each drawing goes through the dashboard's own predict path (dashboard.predict_strokes, one
drawing at a time on one thread, as the dashboard predicts) and its recorded label is the
visitor's answer. This is the one module of the feedback side that imports the dashboard.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence

import torch

from digitlib.dashboard import Prediction, predict_strokes
from digitlib.drawings import Drawing
from digitlib.store import NOT_A_DIGIT, Feedback, FeedbackStore

Predict = Callable[[list], Prediction]


def remembered_predictions(model) -> Predict:
    """The dashboard's prediction for a drawing's strokes, computed once per distinct drawing.

    For benchmarks that answer the same drawings many times with different labels: the model and
    the strokes decide the prediction, so it is the one the dashboard would make each time.
    """
    seen: dict[str, Prediction] = {}

    def predict(strokes) -> Prediction:
        key = json.dumps(strokes, separators=(",", ":"))
        if key not in seen:
            seen[key] = predict_strokes(model, strokes)
        return seen[key]

    return predict


def submit_drawings(
    store: FeedbackStore,
    model,
    drawings: Iterable[Drawing],
    per_session: int = 20,
    predict: Predict | None = None,
    submission_ids: Sequence[str] | None = None,
) -> int:
    """Answer the dashboard with recorded drawings, as visitors would; returns how many rows were saved.

    A drawing's label is the visitor's answer (a null label: "not a digit"); every `per_session`
    drawings make one session, named after the drawing's source. `predict` replaces the model's
    prediction (remembered_predictions) when the same drawings are answered again;
    `submission_ids` (one per drawing) replace the random ones a browser makes, so that the same
    drawing lands on the same side of the export's fixed split every time (benchmarks).
    """
    predict = predict or (lambda strokes: predict_strokes(model, strokes))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the dashboard predicts one drawing at a time
    saved = 0
    try:
        for i, drawing in enumerate(drawings):
            prediction = predict(drawing.strokes)
            row = Feedback.create(
                strokes=drawing.strokes,
                true_label=NOT_A_DIGIT if drawing.label is None else drawing.label,
                probabilities=prediction.probabilities,
                image=prediction.image,
                model_version=prediction.model_version,
                session_id=f"{drawing.source}-{i // per_session}",
                submission_id=None if submission_ids is None else submission_ids[i],
                rejected=prediction.rejected,
                not_digit_probability=prediction.not_digit,
            )
            saved += store.submit(row).status == "saved"
    finally:
        torch.set_num_threads(threads)
    return saved
