"""Model registry in models/: registered versions, a `current` pointer, promotion and rollback.

A registered version is a model directory under models/ with a `registry.json` beside its
weights: parent version, metrics (MNIST test, feedback held-out, drawn digits) and the manifest
of the feedback it was trained on. `models/current.json` names the version the dashboard and
the CLI use by default; without it, `models/default` is the base version.

The pointer is only ever replaced whole (write a temporary file, then `os.replace`), so a
reader sees the old pointer or the new one, never half of one. It keeps the history of
promotions, so `rollback` goes back one step with a single command.

A version is a name, one directory directly inside models/: a pointer or a promotion naming
`../x` or an absolute path is refused. This module imports no torch: the dashboard's `LiveModel`
serves the versions' model.onnx through digitlib.serving.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from digitlib import config
from digitlib.serving import (
    METADATA_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    OnnxModel,
    load_onnx_model,
    read_metadata,
)

POINTER_FILE = "current.json"
RECORD_FILE = "registry.json"
BASE_VERSION = "default"  # models/default: the base when nothing was ever promoted
LOCK_FILE = ".registry.lock"

log = logging.getLogger(__name__)


class RegistryError(CheckpointError):
    """A registry that cannot be used as it is: corrupt pointer, unknown version, nothing to roll back."""


def _models_dir(models_dir: str | Path | None) -> Path:
    return Path(models_dir) if models_dir else config.MODELS_DIR


def pointer_path(models_dir: str | Path | None = None) -> Path:
    return _models_dir(models_dir) / POINTER_FILE


def version_dir(name: str, models_dir: str | Path | None = None) -> Path:
    """models/<name>; refuses a name that is not one plain directory inside models/."""
    root = _models_dir(models_dir)
    text = str(name)
    plain = text not in ("", ".", "..") and "/" not in text and "\\" not in text and "\0" not in text
    directory = root / text
    if not plain or directory.resolve().parent != root.resolve():
        raise RegistryError(f"{text!r} is not a version name: versions are directories directly inside {root}")
    return directory


def resolve_model_dir(models_dir: str | Path | None = None) -> Path:
    """The model to use when none is named: DIGITLIB_MODEL when set (it pins one), else the current version."""
    pinned = config.MODEL_DIR.get()
    return Path(pinned) if pinned else current_model_dir(models_dir)


# --- the pointer ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pointer:
    """Which version is current, and the versions promoted before it (oldest first)."""

    current: str
    history: tuple[str, ...]
    updated_at: str = ""

    def to_json(self) -> str:
        return json.dumps({"current": self.current, "history": list(self.history), "updated_at": self.updated_at})


def read_pointer(models_dir: str | Path | None = None) -> Pointer:
    """The current pointer; the base version when there is no pointer file.

    Raises RegistryError naming the file when it is corrupt or points at a missing version.
    """
    path = pointer_path(models_dir)
    if not path.is_file():
        return Pointer(BASE_VERSION, (BASE_VERSION,))
    fix = f"fix or delete {path} (without it, models/{BASE_VERSION} is used), or run `digitlib rollback`"
    try:
        data = json.loads(path.read_text())
        pointer = Pointer(str(data["current"]), tuple(str(v) for v in data["history"]), str(data.get("updated_at", "")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RegistryError(f"{path}: corrupt model pointer ({e}); {fix}") from None
    if not pointer.history or pointer.history[-1] != pointer.current:
        raise RegistryError(f"{path}: corrupt model pointer (history does not end with current); {fix}")
    for name in pointer.history:
        try:
            version_dir(name, models_dir)
        except RegistryError as e:
            raise RegistryError(f"{path}: refused: {e}; {fix}") from None
    if not (_models_dir(models_dir) / pointer.current / WEIGHTS_FILE).is_file():
        raise RegistryError(f"{path}: points at {pointer.current!r}, which has no {WEIGHTS_FILE}; {fix}")
    return pointer


def _write_pointer(pointer: Pointer, models_dir: Path) -> None:
    """Replace the pointer atomically: readers see the old one or the new one, never a mix."""
    target = pointer_path(models_dir)
    temporary = target.with_name(f".{POINTER_FILE}.{os.getpid()}.tmp")
    with temporary.open("w") as f:
        f.write(pointer.to_json() + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, target)


@contextmanager
def _locked(models_dir: Path) -> Iterator[None]:
    """One promotion or rollback at a time (two people pressing at once must not lose a step)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    with (models_dir / LOCK_FILE).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def current_model_dir(models_dir: str | Path | None = None) -> Path:
    """The directory of the current version (models/default when nothing was promoted)."""
    return _models_dir(models_dir) / read_pointer(models_dir).current


def pointer_stamp(models_dir: str | Path | None = None) -> tuple[int, int] | None:
    """Changes whenever the pointer is replaced (new inode, new mtime); None without a pointer."""
    try:
        st = pointer_path(models_dir).stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


# --- versions ---------------------------------------------------------------------------------


def version_record(name: str, models_dir: str | Path | None = None) -> dict:
    """What the registry knows of a version: its registry.json, or the model metadata for the base."""
    directory = version_dir(name, models_dir)
    if not (directory / WEIGHTS_FILE).is_file():
        raise RegistryError(f"no model version {name!r} in {directory.parent} (no {WEIGHTS_FILE})")
    record_path = directory / RECORD_FILE
    if record_path.is_file():
        return _read_json(record_path, "version record")
    meta_path = directory / METADATA_FILE
    meta = _read_json(meta_path, "model metadata") if meta_path.is_file() else {}
    return {"name": name, "version": meta.get("version", "unknown"), "parent": None, "metrics": meta.get("metrics", {})}


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RegistryError(f"{path}: unreadable {what} ({e}); restore or delete it") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: unreadable {what} (not a JSON object); restore or delete it")
    return data


def register(
    name: str,
    *,
    parent: str | None,
    metrics: dict,
    data_manifest: dict | None = None,
    comparison: dict | None = None,
    models_dir: str | Path | None = None,
) -> dict:
    """Record a trained model directory models/<name>/ as a version (it is not promoted here).

    Writes its model.onnx (checked) when it has none, or one exported from other weights.
    """
    directory = version_dir(name, models_dir)
    if not (directory / WEIGHTS_FILE).is_file():
        raise RegistryError(f"cannot register {name!r}: {directory / WEIGHTS_FILE} does not exist")
    from digitlib.modeling.export import export_onnx, onnx_is_current  # torch: only where versions are made

    if not onnx_is_current(directory):
        export_onnx(directory)
    meta = read_metadata(directory)
    record = {
        "name": name,
        "version": meta["version"],
        "weights_sha256": meta.get("weights_sha256"),  # the comparison holds for these weights only
        "onnx_sha256": (meta.get("onnx") or {}).get("sha256"),
        "parent": parent,
        "registered_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "metrics": metrics,
        "data_manifest": data_manifest,
        "comparison": comparison,
    }
    (directory / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def list_versions(models_dir: str | Path | None = None) -> list[dict]:
    """Every model directory in models/ with its record, the current one marked."""
    root = _models_dir(models_dir)
    current = read_pointer(root).current
    names = sorted(p.parent.name for p in root.glob(f"*/{WEIGHTS_FILE}"))
    rows = []
    for name in names:
        record = version_record(name, root)
        rows.append(
            {
                "name": name,
                "version": record.get("version"),
                "parent": record.get("parent"),
                "current": name == current,
                "registered_at": record.get("registered_at"),
                "metrics": record.get("metrics", {}),
            }
        )
    return rows


# --- the promotion rule -------------------------------------------------------------------------


# Trusted data the feedback cannot touch: a candidate may not lose on these beyond the tolerance,
# whatever it gained on the feedback held-out split (which carries the feedback's wrong labels).
TRUSTED_SETS = {"mnist_validation": "MNIST validation split", "drawings": "pen-digit dev set"}


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    feedback_gain: float
    mnist_change: float
    tolerance: float
    trusted_changes: dict = field(default_factory=dict)  # set name -> candidate minus current

    def to_dict(self) -> dict:
        return {
            "promote": self.promote,
            "reason": self.reason,
            "feedback_gain": self.feedback_gain,
            "mnist_change": self.mnist_change,
            "tolerance": self.tolerance,
            "trusted_changes": dict(self.trusted_changes),
        }


def decide(candidate: dict, current: dict, tolerance: float = 0.002) -> Decision:
    """Promote only if better on the feedback held-out and not worse beyond `tolerance` on MNIST
    test nor on any trusted set (TRUSTED_SETS: MNIST validation, the pen-digit dev set).

    `candidate` and `current` hold accuracies under "feedback_holdout", "mnist_test" and the
    TRUSTED_SETS names, measured on the same data. Without figures on a trusted set the answer is
    a refusal that names it: a gain on feedback alone proves nothing when the feedback may lie.
    """
    for who, figures in (("candidate", candidate), ("current", current)):
        missing = {"feedback_holdout", "mnist_test"} - set(figures)
        if missing:
            raise ValueError(f"{who} figures lack {sorted(missing)}")
    gain = candidate["feedback_holdout"] - current["feedback_holdout"]
    change = candidate["mnist_test"] - current["mnist_test"]
    trusted = {n: candidate[n] - current[n] for n in TRUSTED_SETS if n in candidate and n in current}
    shown = "".join(f", {TRUSTED_SETS[n]} {c:+.2%}" for n, c in trusted.items())
    figures = f"feedback held-out {gain:+.2%}, MNIST test {change:+.2%}{shown} (tolerance {tolerance:.2%})"

    def refused(why: str) -> Decision:
        return Decision(False, f"refused: {why}; {figures}", gain, change, tolerance, trusted)

    absent = [TRUSTED_SETS[n] for n in TRUSTED_SETS if n not in trusted]
    if absent:
        return refused(f"no figures on trusted data ({', '.join(absent)})")
    if gain <= 0:
        return refused("not better on feedback")
    if change < -tolerance:
        return refused("worse on MNIST beyond the tolerance")
    worse = [TRUSTED_SETS[n] for n, c in trusted.items() if c < -tolerance]
    if worse:
        return refused(f"worse on trusted data beyond the tolerance ({', '.join(worse)})")
    return Decision(True, f"promoted: {figures}", gain, change, tolerance, trusted)


# --- moving the pointer -----------------------------------------------------------------------


def promote(name: str, models_dir: str | Path | None = None, force: bool = False) -> Pointer:
    """Make `name` the current version.

    Unless `force`, the version must carry a recorded comparison whose rule said promote, made
    against the version that is current now (a comparison with an older model proves nothing).
    """
    root = _models_dir(models_dir)
    version_dir(name, root)  # before anything else: `promote /abs/path --force` is refused too
    with _locked(root):
        pointer = read_pointer(root)
        record = version_record(name, root)
        if name == pointer.current:
            raise RegistryError(f"{name!r} is already the current version")
        if not force:
            _check_comparison(name, record, pointer.current)
            _check_unchanged_since_registered(name, record, root / name)
        new = Pointer(name, (*pointer.history, name), datetime.now(UTC).isoformat(timespec="seconds"))
        _write_pointer(new, root)
        return new


def _check_comparison(name: str, record: dict, current: str) -> None:
    comparison = record.get("comparison") or {}
    decision = comparison.get("decision") or {}
    if not decision:
        raise RegistryError(f"{name!r} has no recorded comparison with the current model; --force promotes anyway")
    if comparison.get("against") != current:
        raise RegistryError(
            f"{name!r} was compared with {comparison.get('against')!r}, but {current!r} is current now: "
            "retrain or compare again, or use --force"
        )
    if not decision.get("promote"):
        raise RegistryError(f"{name!r} did not pass the promotion rule: {decision.get('reason')}; --force overrides")
    trusted = decision.get("trusted_changes") or {}
    if not set(TRUSTED_SETS) <= set(trusted):
        lacking = ", ".join(TRUSTED_SETS[n] for n in TRUSTED_SETS if n not in trusted)
        raise RegistryError(
            f"{name!r} was compared without figures on trusted data ({lacking}): a comparison recorded before "
            "the trusted-data gate, or one that skipped it, cannot promote; compare again, or use --force"
        )


def _check_unchanged_since_registered(name: str, record: dict, directory: Path) -> None:
    if "weights_sha256" not in record:
        return  # registered before hashes were kept: nothing to compare with
    meta = _read_json(directory / METADATA_FILE, "model metadata")
    if record["weights_sha256"] != meta.get("weights_sha256"):
        raise RegistryError(
            f"{name!r} holds other weights than the ones compared when it was registered "
            "(trained again since?): compare again, or use --force"
        )


def rollback(models_dir: str | Path | None = None) -> Pointer:
    """Go back to the version promoted before the current one."""
    root = _models_dir(models_dir)
    with _locked(root):
        pointer = read_pointer(root)
        if len(pointer.history) < 2:
            raise RegistryError(f"nothing to roll back to: {pointer.current!r} is the first version")
        previous = pointer.history[-2]
        if not (root / previous / WEIGHTS_FILE).is_file():
            raise RegistryError(f"cannot roll back to {previous!r}: {root / previous} has no {WEIGHTS_FILE}")
        new = Pointer(previous, pointer.history[:-1], datetime.now(UTC).isoformat(timespec="seconds"))
        _write_pointer(new, root)
        return new


# --- a model that follows the pointer (dashboard hot swap) ------------------------------------------


class LiveModel:
    """The current version's model.onnx, reloaded when promotion or rollback replaces the pointer.

    `get()` costs one stat() when nothing changed, so the dashboard calls it before every
    prediction: an open session switches models without a server restart. A pointer that cannot
    be used (corrupt, naming a path outside models/, a model that fails its checks) keeps the
    model already loaded (a visitor never sees a broken page), and is logged.
    """

    def __init__(self, models_dir: str | Path | None = None):
        self.models_dir = models_dir
        self._stamp = pointer_stamp(models_dir)
        self.model = load_onnx_model(resolve_model_dir(models_dir))

    def get(self) -> OnnxModel:
        stamp = pointer_stamp(self.models_dir)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.model = load_onnx_model(resolve_model_dir(self.models_dir))
            except CheckpointError as e:
                log.error("model pointer changed but cannot be used, keeping %s: %s", self.model.version, e)
        return self.model

    @property
    def version(self) -> str:
        return self.get().version
