"""Label checks: which feedback labels are likely wrong, and which sessions keep giving them.

A label is judged by out-of-sample predicted probabilities: cleanlab's `find_label_issues`
(confident learning) over the probabilities of a model that never trained on the row. Which
model that is comes from the registry: a version's record names the feedback export it was
fine-tuned on (`data_manifest.time_range.last`) and its parent; a version saw every row up to
the newest export in its lineage (fine-tunes start from their parent's weights). Each row is
judged by the newest version in the current lineage that cannot have seen it (for a first
retrain: the current model for new rows, models/default for older ones); `judged_by` says which.

Besides cleanlab, a row is suspect when the judge answers "not a digit" for a drawing and is not
sure of its label as a digit (scribbles passed off as digits), and when it comes
from a suspect session: one whose answers keep disagreeing with the model (with the prompts'
column `label_source`, when the store has it, the disagreement of prompted answers is reported too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues

from digitlib import registry
from digitlib.modeling.checkpoint import LoadedModel, load_model

REASON_LABEL = "label issue (out-of-sample probabilities)"
REASON_NOT_DIGIT = "model says not a digit"
REASON_SESSION = "suspect session, disagrees with the model"
MIN_SESSION_ROWS = 5  # fewer answers say nothing about a session
SESSION_DISAGREEMENT = 0.5  # honest sessions disagree about as often as the model errs (~10%)
# A drawing the judge rejects keeps its label only when the judge reads it as that digit with this
# confidence: calibrated models reject some real round zeros as "O" yet read them as 0 at 0.9 or more,
# while a scribble whose random label happens to be its best guess rarely gets past 0.9.
REJECTED_LABEL_CONFIDENCE = 0.9


@dataclass
class LabelReport:
    rows: pd.DataFrame  # one per row checked, in input order: label, suspected_label, suspect, reason, judged_by
    sessions: pd.DataFrame  # one per session: n, disagreement, suspect

    @property
    def suspect(self) -> np.ndarray:
        return self.rows["suspect"].to_numpy(bool)

    def manifest_entries(self) -> list[dict]:
        """The suspect rows as the export's manifest lists them."""
        rows = self.rows[self.rows["suspect"]]
        keys = ("submission_id", "session_id", "label", "suspected_label", "reason", "judged_by")
        return [{k: (int(r[k]) if k.endswith("label") else str(r[k])) for k in keys} for _, r in rows.iterrows()]


# --- which model judges which row -----------------------------------------------------------------


def lineage(models_dir: str | Path | None = None) -> list[tuple[str, pd.Timestamp | None]]:
    """The current version and its ancestors, newest first, each with the last feedback time it may have seen."""
    name, chain, seen = registry.read_pointer(models_dir).current, [], set()
    while name and name not in seen:
        seen.add(name)
        record = registry.version_record(name, models_dir)
        last = ((record.get("data_manifest") or {}).get("time_range") or {}).get("last")
        chain.append((name, pd.Timestamp(last) if last else None))
        name = record.get("parent")
    # a version saw what its ancestors saw: carry the newest time forward from the root
    out, newest = [], None
    for name, last in reversed(chain):
        newest = max((t for t in (newest, last) if t is not None), default=None)
        out.append((name, newest))
    return out[::-1]


def assign_judges(created_at: pd.Series, chain: list[tuple[str, pd.Timestamp | None]]) -> list[str]:
    """Per row, the newest version in `chain` that cannot have trained on it (the root when none)."""
    judges = []
    for when in pd.to_datetime(created_at, utc=True):
        name = next((n for n, last in chain if last is None or when > last), None)
        judges.append(name if name is not None else f"{chain[-1][0]} (trained on it)")
    return judges


def out_of_sample(images: np.ndarray, judges: Sequence[str], models_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """(digit probabilities (N, 10), "not a digit" flags (N,)) from each row's judge."""
    root = Path(models_dir) if models_dir else None
    probabilities, not_digit = np.zeros((len(images), 10), np.float32), np.zeros(len(images), bool)
    judges = np.asarray(judges, dtype=object)
    for name in dict.fromkeys(judges):
        rows = np.flatnonzero(judges == name)
        version = str(name).split(" (")[0]
        model = load_model(root / version if root else registry.version_dir(version))
        p, nd = model.predict(images[rows])
        probabilities[rows], not_digit[rows] = p.numpy(), model.is_not_digit(nd)
    return probabilities, not_digit


# --- the checks ---------------------------------------------------------------------------------------


def check_labels(
    labels: np.ndarray,
    probabilities: np.ndarray,
    session_ids: Sequence[str],
    *,
    not_digit: np.ndarray | None = None,
    submission_ids: Sequence[str] | None = None,
    judged_by: Sequence[str] | None = None,
    label_source: Sequence[str] | None = None,
    min_session_rows: int = MIN_SESSION_ROWS,
    session_disagreement: float = SESSION_DISAGREEMENT,
) -> LabelReport:
    """Suspect rows and sessions from labels 0-9 and out-of-sample probabilities (N, 10)."""
    labels = np.asarray(labels, np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    n = len(labels)
    if probabilities.shape != (n, 10):
        raise ValueError(f"probabilities must be ({n}, 10), not {probabilities.shape}")
    guess = probabilities.argmax(1) if n else np.zeros(0, np.int64)
    issue = _label_issues(labels, probabilities)
    rejected = np.zeros(n, bool) if not_digit is None else np.asarray(not_digit, bool)
    rows = pd.DataFrame(
        {
            "submission_id": list(submission_ids) if submission_ids is not None else [str(i) for i in range(n)],
            "session_id": [str(s) for s in session_ids],
            "label": labels,
            "suspected_label": guess,
            "label_quality": probabilities[np.arange(n), labels] if n else np.zeros(0),
            "judged_by": list(judged_by) if judged_by is not None else [""] * n,
        }
    )
    disagrees = labels != guess
    if label_source is not None:
        rows["label_source"] = list(label_source)
    sessions = _session_table(rows, disagrees, min_session_rows, session_disagreement)
    in_suspect_session = rows["session_id"].map(sessions["suspect"]).to_numpy(bool)
    unsure = rows["label_quality"].to_numpy() < REJECTED_LABEL_CONFIDENCE
    reason = np.where(issue, REASON_LABEL, np.where(rejected & unsure, REASON_NOT_DIGIT, ""))
    reason = np.where((reason == "") & in_suspect_session & disagrees, REASON_SESSION, reason)
    rows["suspect"] = reason != ""
    rows["reason"] = reason
    return LabelReport(rows, sessions)


def _label_issues(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """cleanlab's confident-learning filter; too few rows to estimate noise rates: the plain disagreement."""
    if len(labels) < 20 or len(np.unique(labels)) < 2:
        return (labels != probabilities.argmax(1)) & (probabilities.max(1) > 0.9) if len(labels) else np.zeros(0, bool)
    return find_label_issues(labels, probabilities, filter_by="prune_by_noise_rate", n_jobs=1)


def _session_table(rows: pd.DataFrame, disagrees: np.ndarray, min_rows: int, threshold: float) -> pd.DataFrame:
    frame = rows.assign(disagrees=disagrees)
    grouped = frame.groupby("session_id", sort=False)
    table = pd.DataFrame({"n": grouped.size(), "disagreement": grouped["disagrees"].mean()})
    if "label_source" in frame:
        prompted = frame[frame["label_source"] == "prompt"].groupby("session_id")["disagrees"]
        table["prompted"] = prompted.size().reindex(table.index, fill_value=0)
        table["prompted_disagreement"] = prompted.mean().reindex(table.index)
    table["suspect"] = (table["n"] >= min_rows) & (table["disagreement"] >= threshold)
    return table.sort_values("disagreement", ascending=False)


def check_feedback(frame: pd.DataFrame, images: np.ndarray, models_dir: str | Path | None = None) -> LabelReport:
    """Label checks for digit answers (a load_feedback frame and their 28x28 uint8 images), judged out of sample."""
    judges = assign_judges(frame["created_at"], lineage(models_dir))
    probabilities, not_digit = out_of_sample(images, judges, models_dir)
    return check_labels(
        frame["true_label"].to_numpy(np.int64),
        probabilities,
        frame["session_id"].astype(str).tolist(),
        not_digit=not_digit,
        submission_ids=frame["submission_id"].astype(str).tolist(),
        judged_by=judges,
        label_source=frame["label_source"].tolist() if "label_source" in frame else None,
    )


def check_with_model(model: LoadedModel, images: np.ndarray, labels, session_ids, **kwargs) -> LabelReport:
    """Label checks judged by one model the caller knows never trained on these rows (benchmarks, tests)."""
    p, nd = model.predict(images)
    return check_labels(labels, p.numpy(), session_ids, not_digit=model.is_not_digit(nd), **kwargs)
