"""The feedback data: logged answers read back as a DataFrame, their analysis, the drawings they hold.

- `load_feedback` reads `prediction_logs` (SQLite or PostgreSQL) into pandas, with the images
  and strokes decoded on request; `feedback_drawings` gives the digit answers as drawings.
- `feedback_summary`, `accuracy_per_version`, `user_confusion`, `rejection_agreement` and
  `rejection_rates` are what the analysis notebook (3.0) shows.

Turning the feedback into a training set is digitlib.feedback_export; the retrain recipe is
digitlib.retrain; simulated visitors are digitlib.simulate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from digitlib import config
from digitlib.dataset import DataError
from digitlib.drawings import Drawing
from digitlib.modeling.predict import confusion_counts
from digitlib.store import FeedbackStore, png_to_image, prediction_logs, redact_url, resolve_database_url

SUMMARY_COLUMNS = [
    "id", "submission_id", "created_at", "model_version", "predicted", "confidence", "probabilities",
    "true_label", "canvas_size", "session_id", "not_digit", "rejected", "not_digit_probability",
    "label_source",
]  # fmt: skip


class FeedbackDataError(DataError):
    """Feedback that cannot be used as asked: nothing logged, an export that is missing or altered."""


# --- reading ----------------------------------------------------------------------------------


def _sqlite_file_missing(url: str) -> bool:
    parsed = make_url(url)
    database = parsed.database or ""
    return parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:") and not Path(database).is_file()


def load_feedback(url: str | None = None, images: bool = False, strokes: bool = False) -> pd.DataFrame:
    """Every logged answer as a DataFrame, oldest first (empty, with the columns, when none are).

    Adds `correct` (the visitor said the model was right: its digit when it answered a digit,
    "not a digit" when it rejected the drawing). `images=True` adds `image`, the
    28x28 uint8 model input decoded from its PNG; `strokes=True` adds the drawing's strokes.
    `label_source` ("prompt", "confirmed", "corrected") is derived from `correct` for a database
    from before revision 0004, as that migration backfills it.
    A missing SQLite file or table is an empty frame, and is not created by reading.
    """
    url = resolve_database_url(url or config.DATABASE_URL.get())
    columns = SUMMARY_COLUMNS + ["image"] * images + ["strokes"] * strokes
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in [*columns, "correct"]})
    if _sqlite_file_missing(url):
        return empty
    store = FeedbackStore(url, timeouts=False)  # an analysis may read for longer than a visitor waits
    try:
        inspector = inspect(store.engine)
        if not inspector.has_table(prediction_logs.name):
            return empty
        present = {c["name"] for c in inspector.get_columns(prediction_logs.name)}
        query = select(*(prediction_logs.c[c] for c in columns if c in present)).order_by(prediction_logs.c.id)
        with store.engine.connect() as connection:
            frame = pd.DataFrame([dict(r._mapping) for r in connection.execute(query)], columns=columns)
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise FeedbackDataError(f"{redact_url(url)}: cannot read the feedback ({reason})") from None
    finally:
        store.dispose()
    if frame.empty:
        return empty
    # SQLite hands back naive datetimes: the store writes UTC.
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    for flag in ("not_digit", "rejected"):
        frame[flag] = frame[flag].astype(bool)  # SQLite may hand back 0/1
    answered_digit = ~frame["rejected"] & ~frame["not_digit"] & (frame["predicted"] == frame["true_label"])
    frame["correct"] = answered_digit | (frame["rejected"] & frame["not_digit"])
    source = frame["label_source"].astype(object)  # all missing (float NaN) before revision 0004
    frame["label_source"] = source.where(source.notna(), np.where(frame["correct"], "confirmed", "corrected"))
    if images:
        frame["image"] = [png_to_image(bytes(png)) for png in frame["image"]]
    return frame


def feedback_drawings(url: str | None = None) -> list[Drawing]:
    """Stored digit answers as drawings (strokes + the visitor's label), oldest first, for evaluation or training.

    They go through the same preprocess.strokes_to_input path as the dashboard's input.
    "Not a digit" answers have no digit label: they are left out (feedback_export keeps them apart).
    """
    frame = load_feedback(url, strokes=True)
    digits = frame[~frame["not_digit"].astype(bool)]
    return [
        Drawing(strokes, int(label), "feedback", str(session))
        for strokes, label, session in zip(digits["strokes"], digits["true_label"], digits["session_id"], strict=True)
    ]


# --- analysis -----------------------------------------------------------------------------------


def feedback_summary(frame: pd.DataFrame) -> dict:
    """Headline figures: how much feedback, over what time, how often the model was right."""
    if frame.empty:
        return {"n": 0}
    return {
        "n": len(frame),
        "not_digit_answers": int(frame["not_digit"].sum()),
        "rejected_by_model": int(frame["rejected"].sum()),
        "sessions": int(frame["session_id"].nunique()),
        "first": frame["created_at"].min().isoformat(),
        "last": frame["created_at"].max().isoformat(),
        "said_correct": float(frame["correct"].mean()),
        "per_version": accuracy_per_version(frame).reset_index().to_dict("records"),
    }


def accuracy_per_version(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model version: answers, share the visitors said was right, mean confidence, first/last seen."""
    grouped = frame.groupby("model_version")
    table = pd.DataFrame(
        {
            "n": grouped.size(),
            "accuracy": grouped["correct"].mean(),
            "mean_confidence": grouped["confidence"].mean(),
            "first": grouped["created_at"].min().map(lambda t: t.isoformat()),
            "last": grouped["created_at"].max().map(lambda t: t.isoformat()),
        }
    )
    return table.sort_values("first")


def user_confusion(frame: pd.DataFrame) -> np.ndarray:
    """10x10 counts over digit answers: rows the label visitors gave, columns the model's best guess."""
    digits = frame[~frame["not_digit"]]
    return confusion_counts(digits["true_label"].to_numpy(np.int64), digits["predicted"].to_numpy(np.int64)).numpy()


def rejection_agreement(frame: pd.DataFrame) -> pd.DataFrame:
    """2x2 counts: the visitor's answer (rows: a digit / not a digit) against the model's (columns).

    Only rows whose model had a not-digit output (not_digit_probability not null) say anything
    about rejection; older rows are left out.
    """
    judged = frame[frame["not_digit_probability"].notna()]
    names = {False: "a digit", True: "not a digit"}
    table = pd.crosstab(
        judged["not_digit"].map(names).rename("visitor said"),
        judged["rejected"].map(names).rename("model said"),
    )
    return table.reindex(index=list(names.values()), columns=list(names.values()), fill_value=0)


def rejection_rates(frame: pd.DataFrame) -> dict:
    """How the model's rejections matched the visitors' answers (rows with a not-digit output only).

    `digits`: share of digit answers the model answered "not a digit" (turned away wrongly);
    `non_digits`: share of "not a digit" answers it rejected (caught); None where there are none.
    """
    table = rejection_agreement(frame)
    out = {}
    for key, row in (("digits", "a digit"), ("non_digits", "not a digit")):
        n = int(table.loc[row].sum())
        out[f"n_{key}"] = n
        out[key] = float(table.loc[row, "not a digit"] / n) if n else None
    return out
