"""The feedback loop's data side: logged answers as a DataFrame, their analysis, a training set.

- `load_feedback` reads `prediction_logs` (SQLite or PostgreSQL) into pandas, with the images
  and strokes decoded on request.
- `export_training_set` re-renders every stored drawing from its strokes through
  preprocess.strokes_to_input (today's preprocessing, not the PNG saved when it was drawn),
  drops duplicates, splits off a fixed held-out set and writes a manifest. "Not a digit"
  answers stay out of the digit sets: they go to not_digit.npz, a class of their own.
- `training_mix`, `fine_tune_config` and `compare_models` are the retrain recipe: MNIST plus
  oversampled feedback, fine-tuning the current model, candidate and current side by side.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sqlalchemy import inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from digitlib import config
from digitlib.dataset import DataError, Digits
from digitlib.modeling.checkpoint import LoadedModel, file_sha256
from digitlib.modeling.predict import confusion_counts, evaluate
from digitlib.modeling.train import TrainConfig
from digitlib.preprocess import DEFAULT_BRUSH, DrawingError, strokes_to_input
from digitlib.store import FeedbackStore, png_to_image, prediction_logs, redact_url, resolve_database_url

SUMMARY_COLUMNS = [
    "id", "submission_id", "created_at", "model_version", "predicted", "confidence", "probabilities",
    "true_label", "canvas_size", "session_id", "not_digit", "rejected", "not_digit_probability",
    "label_source",
]  # fmt: skip
MANIFEST_FILE = "manifest.json"
SPLIT_FILES = {"train": "train.npz", "holdout": "holdout.npz"}
NOT_DIGIT_FILE = "not_digit.npz"  # images visitors answered "not a digit" for, with their split
DEFAULT_HOLDOUT_FRACTION = 0.2


class FeedbackDataError(DataError):
    """Feedback that cannot be used as asked: nothing logged, an export that is missing or altered."""


# The one redaction function (store.redact_url): manifests, reports and notebooks show URLs through it.
password_free_url = redact_url


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


# --- export -------------------------------------------------------------------------------------


def in_holdout(submission_id: str, fraction: float = DEFAULT_HOLDOUT_FRACTION) -> bool:
    """The fixed split: a submission's side depends on its id alone, so it never changes sides."""
    bucket = int(hashlib.sha256(submission_id.encode()).hexdigest()[:8], 16) / 16**8
    return bucket < fraction


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


def _drawing_key(strokes) -> str:
    return hashlib.sha256(json.dumps(strokes, separators=(",", ":")).encode()).hexdigest()


def _deduplicate(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """One row per drawing (the first answer); a drawing given different answers is dropped as unreliable.

    "Not a digit" is an answer like a label: a drawing called both 3 and "not a digit" goes.
    """
    keys = frame["strokes"].map(_drawing_key)
    answers = frame["true_label"].where(~frame["not_digit"], -1)
    labels_per_key = answers.groupby(keys).nunique()
    conflicting = keys.map(labels_per_key) > 1
    kept = frame[~conflicting & ~keys.duplicated()]
    duplicates = int((~conflicting).sum()) - len(kept)
    return kept, duplicates, int(conflicting.sum())


def _render(frame: pd.DataFrame) -> tuple[list[np.ndarray], list[int]]:
    """Re-render every drawing through today's preprocessing; returns images and the rows that rendered."""
    images, rendered = [], []
    for position, strokes in enumerate(frame["strokes"]):
        try:
            images.append(strokes_to_input(strokes, DEFAULT_BRUSH))
            rendered.append(position)
        except DrawingError:
            continue  # stored rows were validated; one that no longer renders is counted, not fatal
    return images, rendered


def _write_split(path: Path, frame: pd.DataFrame, images: list[np.ndarray]) -> str:
    stacked = np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)
    ids = frame["submission_id"].to_numpy(dtype=str)
    np.savez_compressed(path, images=stacked, labels=frame["true_label"].to_numpy(np.int64), submission_ids=ids)
    return file_sha256(path)


def _write_not_digit(path: Path, frame: pd.DataFrame, images: list[np.ndarray], holdout: np.ndarray) -> str:
    stacked = np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)
    ids = frame["submission_id"].to_numpy(dtype=str)
    np.savez_compressed(path, images=stacked, holdout=holdout.astype(bool), submission_ids=ids)
    return file_sha256(path)


def _label_counts(frame: pd.DataFrame) -> dict[str, int]:
    counts = frame["true_label"].value_counts()
    return {str(d): int(counts.get(d, 0)) for d in range(10)}


def export_training_set(
    out: str | Path,
    url: str | None = None,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    *,
    check_labels: bool = True,
    keep_suspect: bool = False,
    models_dir: str | Path | None = None,
) -> dict:
    """Write train.npz, holdout.npz, not_digit.npz and manifest.json into `out`; returns the manifest.

    train/holdout hold digit answers (labels 0-9) only. not_digit.npz holds the drawings
    visitors answered "not a digit" for (images, holdout flags by the same split rule): a class
    of its own for a trainer with a not-digit output, never mixed into the digit labels.

    With `check_labels`, digit answers go through digitlib.label_checks (judged out of sample by
    the registry in `models_dir`): suspect rows are left out of train and holdout unless
    `keep_suspect`, and listed in the manifest either way (submission id, reason).

    Raises FeedbackDataError when there is no usable feedback.
    """
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be between 0 and 1, not {holdout_fraction}")
    url = resolve_database_url(url or config.DATABASE_URL.get())
    frame = load_feedback(url, strokes=True)
    if frame.empty:
        raise FeedbackDataError(f"no feedback in {password_free_url(url)}: nothing to export")
    unique, duplicates, conflicting = _deduplicate(frame)
    images, rendered = _render(unique)
    usable = unique.iloc[rendered].reset_index(drop=True)
    if usable.empty:
        raise FeedbackDataError(f"none of the {len(frame)} rows in {password_free_url(url)} gives a usable drawing")
    holdout = usable["submission_id"].map(lambda s: in_holdout(s, holdout_fraction)).to_numpy()
    negative = usable["not_digit"].to_numpy(bool)
    suspect, suspects = _suspect_rows(usable, images, negative, models_dir) if check_labels else (None, None)
    kept = ~negative if suspect is None or keep_suspect else ~negative & ~suspect
    out = Path(out)
    splits, checksums = {"train": ~holdout & kept, "holdout": holdout & kept}, {}
    dropped = {"duplicates": duplicates, "conflicting_labels": conflicting, "unrenderable": len(unique) - len(usable)}
    if suspect is not None and not keep_suspect:
        dropped["suspect_labels"] = int(suspect.sum())
    manifest = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source_db": password_free_url(url),
        "time_range": {"first": usable["created_at"].min().isoformat(), "last": usable["created_at"].max().isoformat()},
        "rows_in_db": len(frame),
        "exported": len(usable),
        "dropped": dropped,
        "split": {"rule": "sha256(submission_id) bucket < holdout_fraction", "holdout_fraction": holdout_fraction},
        "counts": {s: {"n": int(m.sum()), "per_label": _label_counts(usable[m])} for s, m in splits.items()},
        "not_digit": {
            "file": NOT_DIGIT_FILE,
            "n": int(negative.sum()),
            "train": int((negative & ~holdout).sum()),
            "holdout": int((negative & holdout).sum()),
            "note": "answers 'not a digit': kept out of train/holdout (labels 0-9 only); a class of their own",
        },
        "label_checks": {
            "checked": check_labels,
            "kept_in_splits": keep_suspect,
            "n_suspect": len(suspects) if suspects is not None else None,
            "suspect": suspects,
            "note": "digit answers judged by out-of-sample probabilities (digitlib.label_checks), see judged_by",
        },
        "model_versions": {str(k): int(v) for k, v in usable["model_version"].value_counts().items()},
        "preprocessing": "preprocess.strokes_to_input (re-rendered from stored strokes)",
        "sha256": checksums,
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        with _all_or_nothing(out) as staged:
            for split, mask in splits.items():
                chosen = [image for image, keep in zip(images, mask, strict=True) if keep]
                checksums[split] = _write_split(staged(SPLIT_FILES[split]), usable[mask], chosen)
            chosen = [image for image, keep in zip(images, negative, strict=True) if keep]
            checksums["not_digit"] = _write_not_digit(
                staged(NOT_DIGIT_FILE), usable[negative], chosen, holdout[negative]
            )
            staged(MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    except OSError as e:  # a read-only or full disk: the folder keeps what it held before
        raise FeedbackDataError(f"{out}: export not written ({e.strerror or e}); the folder is as it was") from None
    return manifest


def _suspect_rows(usable: pd.DataFrame, images: list[np.ndarray], negative: np.ndarray, models_dir):
    """(bool per usable row, manifest entries): digit answers the label checks suspect."""
    from digitlib import label_checks
    from digitlib.modeling.checkpoint import CheckpointError

    suspect = np.zeros(len(usable), bool)
    digits = np.flatnonzero(~negative)
    if not len(digits):
        return suspect, []
    try:
        report = label_checks.check_feedback(usable.iloc[digits], np.stack([images[i] for i in digits]), models_dir)
    except CheckpointError as e:  # RegistryError too: no model to judge with
        raise FeedbackDataError(f"label checks need a model to judge with: {e}") from None
    suspect[digits] = report.suspect
    return suspect, report.manifest_entries()


@contextmanager
def _all_or_nothing(folder: Path):
    """Yields `staged(name)`: a temporary path for `name` in `folder`; at the end all are renamed into place, or none.

    In the same folder, so each rename is atomic; the manifest goes last, so a reader never
    finds a manifest whose checksums are not those of the files beside it.
    """
    temporary: dict[str, Path] = {}

    def staged(name: str) -> Path:
        suffix = Path(name).suffix  # numpy would append .npz to a name without it
        temporary[name] = folder / f".{name}.{uuid.uuid4().hex}.tmp{suffix}"
        return temporary[name]

    try:
        yield staged
        for path in temporary.values():
            with path.open("rb") as f:
                os.fsync(f.fileno())
        for name in sorted(temporary, key=lambda n: n == MANIFEST_FILE):
            os.replace(temporary[name], folder / name)
    finally:
        for path in temporary.values():
            path.unlink(missing_ok=True)


@dataclass
class FeedbackExport:
    train: Digits
    holdout: Digits
    manifest: dict
    directory: Path
    # "Not a digit" drawings per split: uint8 (N, 28, 28); empty for exports made before them.
    not_digit: dict[str, torch.Tensor] | None = None


def load_export(directory: str | Path) -> FeedbackExport:
    """Read an export back, checking its files against the manifest's checksums."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FeedbackDataError(f"{directory}: no {MANIFEST_FILE}; run `digitlib export-feedback {directory}`")
    manifest = json.loads(manifest_path.read_text())
    splits = {}
    for split, name in SPLIT_FILES.items():
        path = directory / name
        if not path.is_file() or file_sha256(path) != manifest["sha256"][split]:
            raise FeedbackDataError(f"{path}: missing or altered since export (checksum differs from {manifest_path})")
        with np.load(path, allow_pickle=False) as data:
            splits[split] = Digits(torch.from_numpy(data["images"]), torch.from_numpy(data["labels"]))
    empty = torch.zeros((0, 28, 28), dtype=torch.uint8)
    not_digit = {"train": empty, "holdout": empty}
    if "not_digit" in manifest["sha256"]:  # older exports have no such file
        path = directory / NOT_DIGIT_FILE
        if not path.is_file() or file_sha256(path) != manifest["sha256"]["not_digit"]:
            raise FeedbackDataError(f"{path}: missing or altered since export (checksum differs from {manifest_path})")
        with np.load(path, allow_pickle=False) as data:
            images, holdout = torch.from_numpy(data["images"]), torch.from_numpy(data["holdout"])
        not_digit = {"train": images[~holdout], "holdout": images[holdout]}
    return FeedbackExport(splits["train"], splits["holdout"], manifest, directory, not_digit)


# --- retraining -----------------------------------------------------------------------------------


def concat_digits(*parts: Digits) -> Digits:
    return Digits(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


def training_mix(mnist: Digits, feedback: Digits, mnist_subset: int | None = None, oversample: int = 10) -> Digits:
    """MNIST (its first `mnist_subset` images) plus the feedback repeated `oversample` times.

    Repeating is the weighting: a few hundred drawings would be drowned in tens of thousands of
    MNIST digits. Order does not matter: training shuffles every epoch.
    """
    if oversample < 0:
        raise ValueError(f"oversample must be 0 or more, not {oversample}")
    repeated = feedback.subset(torch.arange(len(feedback)).repeat(oversample))
    return concat_digits(mnist.head(mnist_subset), repeated)


def fine_tune_config(base: LoadedModel, **overrides) -> TrainConfig:
    """Start from `base`'s weights: a short, gentle run (low learning rate, cosine decay)."""
    if base.path is None:
        raise ValueError("the base model must come from a model directory (load_model)")
    settings = {
        "arch": base.metadata["arch"],
        "init_from": str(base.path),
        "epochs": 2,
        "lr": 3e-4,
        "schedule": "cosine",
        "augment": "light",
        "val_size": 0,
        # Keep the base's outputs: a 10-output base stays one, an 11-output one keeps learning "not a digit".
        "negatives": TrainConfig.negatives if base.metadata.get("outputs", 10) > 10 else 0.0,
        **overrides,
    }
    return TrainConfig(**settings)


def compare_models(models: dict[str, LoadedModel], sets: dict[str, Digits]) -> pd.DataFrame:
    """Accuracy of each model (columns) on each evaluation set (rows), with the set's size."""
    rows = {}
    for set_name, digits in sets.items():
        rows[set_name] = {"n": len(digits), **{m: evaluate(model, digits).accuracy for m, model in models.items()}}
    return pd.DataFrame.from_dict(rows, orient="index")


# --- simulated visitors (tests, benchmarks, demonstrations) -------------------------------------


def submit_drawings(store: FeedbackStore, model: LoadedModel, drawings, per_session: int = 20) -> int:
    """Answer the dashboard with recorded drawings, as visitors would; returns how many rows were saved.

    Each drawing goes through the dashboard's own predict path, and its recorded label is the
    visitor's answer (a null label: "not a digit"); every `per_session` drawings make one session.
    """
    from digitlib.dashboard import predict_strokes
    from digitlib.store import NOT_A_DIGIT, Feedback

    saved = 0
    for i, drawing in enumerate(drawings):
        prediction = predict_strokes(model, drawing.strokes)
        row = Feedback.create(
            strokes=drawing.strokes,
            true_label=NOT_A_DIGIT if drawing.label is None else drawing.label,
            probabilities=prediction.probabilities,
            image=prediction.image,
            model_version=prediction.model_version,
            session_id=f"{drawing.source}-{i // per_session}",
            rejected=prediction.rejected,
            not_digit_probability=prediction.not_digit,
        )
        saved += store.submit(row).status == "saved"
    return saved
