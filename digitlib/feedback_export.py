"""The feedback as a training set: deduplicated, re-rendered, label-checked, split, with a manifest.

`export_training_set` re-renders every stored drawing from its strokes through
preprocess.strokes_to_input (today's preprocessing, not the PNG saved when it was drawn),
drops duplicates, sets aside the labels digitlib.label_checks suspects (out of the training
split; the held-out split keeps them, see export_training_set), splits off a fixed held-out set
and writes a manifest. "Not a digit" answers stay out of the digit sets: they go
to not_digit.npz, a class of their own. `load_export` reads an export back, checked.
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

from digitlib import config, feedback
from digitlib.dataset import Digits
from digitlib.feedback import FeedbackDataError
from digitlib.modeling.checkpoint import file_sha256
from digitlib.preprocess import DEFAULT_BRUSH, render_drawings
from digitlib.store import redact_url, resolve_database_url

MANIFEST_FILE = "manifest.json"
SPLIT_FILES = {"train": "train.npz", "holdout": "holdout.npz"}
NOT_DIGIT_FILE = "not_digit.npz"  # images visitors answered "not a digit" for, with their split
DEFAULT_HOLDOUT_FRACTION = 0.2


def in_holdout(submission_id: str, fraction: float = DEFAULT_HOLDOUT_FRACTION) -> bool:
    """The fixed split: a submission's side depends on its id alone, so it never changes sides."""
    bucket = int(hashlib.sha256(submission_id.encode()).hexdigest()[:8], 16) / 16**8
    return bucket < fraction


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


def _write_split(path: Path, frame: pd.DataFrame, images: np.ndarray) -> str:
    ids = frame["submission_id"].to_numpy(dtype=str)
    np.savez_compressed(path, images=images, labels=frame["true_label"].to_numpy(np.int64), submission_ids=ids)
    return file_sha256(path)


def _write_not_digit(path: Path, frame: pd.DataFrame, images: np.ndarray, holdout: np.ndarray) -> str:
    ids = frame["submission_id"].to_numpy(dtype=str)
    np.savez_compressed(path, images=images, holdout=holdout.astype(bool), submission_ids=ids)
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
    the registry in `models_dir`): suspect rows are left out of train unless `keep_suspect`, and
    listed in the manifest either way (submission id, reason). The held-out split keeps every
    digit answer of its bucket, suspect or not: the judge of new rows is the current model, so a
    held-out split cleaned by it would hold only the rows that model already reads (its confident
    mistakes are what the checks flag) and the promotion gate, comparing a candidate with that
    model there, could never see a gain. Wrong labels left in the held-out split cost current
    and candidate alike, unless the candidate learnt them: the gate's trusted sets catch that.

    Raises FeedbackDataError when there is no usable feedback.
    """
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be between 0 and 1, not {holdout_fraction}")
    url = resolve_database_url(url or config.DATABASE_URL.get())
    frame = feedback.load_feedback(url, strokes=True)  # module attribute: tests wrap it
    if frame.empty:
        raise FeedbackDataError(f"no feedback in {redact_url(url)}: nothing to export")
    unique, duplicates, conflicting = _deduplicate(frame)
    # stored rows were validated; one that no longer renders is counted, not fatal
    images, rendered = render_drawings(unique["strokes"], DEFAULT_BRUSH, skip_bad=True)
    usable = unique.iloc[rendered].reset_index(drop=True)
    if usable.empty:
        raise FeedbackDataError(f"none of the {len(frame)} rows in {redact_url(url)} gives a usable drawing")
    holdout = usable["submission_id"].map(lambda s: in_holdout(s, holdout_fraction)).to_numpy()
    negative = usable["not_digit"].to_numpy(bool)
    suspect, suspects = _suspect_rows(usable, images, negative, models_dir) if check_labels else (None, None)
    trained = ~negative if suspect is None or keep_suspect else ~negative & ~suspect
    out = Path(out)
    # the held-out split is never filtered by the label checks (their judge is the model it is compared with)
    splits, checksums = {"train": ~holdout & trained, "holdout": holdout & ~negative}, {}
    dropped = {"duplicates": duplicates, "conflicting_labels": conflicting, "unrenderable": len(unique) - len(usable)}
    if suspect is not None and not keep_suspect:
        dropped["suspect_labels"] = int((suspect & ~holdout).sum())  # from train; the held-out split keeps its own
    manifest = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source_db": redact_url(url),
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
            "kept_in_train": keep_suspect,  # suspect rows stay in train (the held-out split always keeps them)
            "n_suspect": len(suspects) if suspects is not None else None,
            "in_holdout": int((suspect & holdout).sum()) if suspect is not None else None,
            "suspect": suspects,
            "note": "digit answers judged by out-of-sample probabilities (digitlib.label_checks), see judged_by; "
            "suspect rows are left out of train only: the held-out split, which the gate compares the judge on, "
            "keeps them",
        },
        "model_versions": {str(k): int(v) for k, v in usable["model_version"].value_counts().items()},
        "preprocessing": "preprocess.strokes_to_input (re-rendered from stored strokes)",
        "sha256": checksums,
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        with _all_or_nothing(out) as staged:
            for split, mask in splits.items():
                checksums[split] = _write_split(staged(SPLIT_FILES[split]), usable[mask], images[mask])
            checksums["not_digit"] = _write_not_digit(
                staged(NOT_DIGIT_FILE), usable[negative], images[negative], holdout[negative]
            )
            staged(MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    except OSError as e:  # a read-only or full disk: the folder keeps what it held before
        raise FeedbackDataError(f"{out}: export not written ({e.strerror or e}); the folder is as it was") from None
    return manifest


def _suspect_rows(usable: pd.DataFrame, images: np.ndarray, negative: np.ndarray, models_dir):
    """(bool per usable row, manifest entries): digit answers the label checks suspect."""
    from digitlib import label_checks
    from digitlib.modeling.checkpoint import CheckpointError

    suspect = np.zeros(len(usable), bool)
    digits = np.flatnonzero(~negative)
    if not len(digits):
        return suspect, []
    try:
        report = label_checks.check_feedback(usable.iloc[digits], images[digits], models_dir)
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
