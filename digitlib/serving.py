"""Serving without torch: a model directory's `model.onnx` run by ONNX Runtime.

The dashboard kernel imports this, never torch (torch alone costs ~700 MiB and 2 s per
visitor). The file is checked against the SHA-256 recorded in metadata.json before it is
loaded, as the `.pt` is; `digitlib export-onnx` writes it (modeling/export.py, torch side).
This module also holds the model-file names and errors both sides share, so that the
registry and the dashboard need nothing from the torch side.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WEIGHTS_FILE = "model.pt"
METADATA_FILE = "metadata.json"
ONNX_FILE = "model.onnx"
INPUT_NAME = "images"  # uint8 (N, 28, 28): normalisation is inside the graph
OUTPUT_NAMES = ("logits", "probabilities")
# Calibrated probability that a drawing is not a digit; models exported before it lack the output.
NOT_DIGIT_OUTPUT = "not_digit"


class CheckpointError(Exception):
    """A model file that is missing, unsafe, corrupt or for another architecture."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_metadata(directory: Path) -> dict:
    """metadata.json of a model directory; an unreadable one is an error naming the file."""
    path = Path(directory) / METADATA_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; the model directory is incomplete") from None
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
        raise CheckpointError(f"{path}: unreadable model metadata ({e}); restore it from git or re-export") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: unreadable model metadata (not a JSON object); restore it")
    return data


def export_hint(directory: Path) -> str:
    return f"run `digitlib export-onnx --model {directory}` to write it"


@dataclass
class OnnxModel:
    """A model directory's model.onnx in an ONNX Runtime session (one thread), with its metadata."""

    session: object  # onnxruntime.InferenceSession
    metadata: dict
    path: Path | None = None

    @property
    def version(self) -> str:
        return self.metadata.get("version", "unknown")

    @property
    def rejection_threshold(self) -> float | None:
        """not_digit at or above this answers "not a digit"; None: the model never rejects."""
        return rejection_threshold(self.metadata)

    def is_not_digit(self, not_digit) -> np.ndarray:
        """Bool array: which not_digit probabilities (from `predict`) are answered "not a digit"."""
        return is_not_digit(not_digit, self.rejection_threshold)

    def predict(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (N, 10), not_digit (N,)), float32, for uint8 images (N, 28, 28) or one (28, 28).

        probabilities are calibrated over the ten digits (they sum to 1); not_digit is the
        calibrated probability that the drawing is no digit at all (zeros for a model without it).
        """
        x = _as_images(images)
        feed = {INPUT_NAME: x}
        if NOT_DIGIT_OUTPUT in self._outputs():
            probabilities, not_digit = self.session.run([OUTPUT_NAMES[1], NOT_DIGIT_OUTPUT], feed)
            return probabilities, not_digit.reshape(-1).astype(np.float32)
        probabilities = self.session.run([OUTPUT_NAMES[1]], feed)[0]
        return probabilities, np.zeros(len(x), np.float32)

    def predict_proba(self, images) -> np.ndarray:
        """Calibrated digit probabilities (N, 10) float32 for uint8 images (N, 28, 28) or one (28, 28)."""
        return self.session.run([OUTPUT_NAMES[1]], {INPUT_NAME: _as_images(images)})[0]

    def _outputs(self) -> set[str]:
        return {o.name for o in self.session.get_outputs()}

    def logits(self, images) -> np.ndarray:
        return self.session.run([OUTPUT_NAMES[0]], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.uint8)})[0]


def _as_images(images) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise ValueError(f"images must be (N, 28, 28) uint8, got shape {x.shape}")
    if x.dtype != np.uint8:
        x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x)


def rejection_threshold(metadata: dict) -> float | None:
    """The recorded operating point (metadata["rejection"]["threshold"]), or None."""
    value = (metadata.get("rejection") or {}).get("threshold")
    return None if value is None else float(value)


def is_not_digit(not_digit, threshold: float | None) -> np.ndarray:
    """not_digit >= threshold, elementwise; all False without a threshold. Shared by both sides."""
    values = np.asarray(not_digit, dtype=np.float64)
    if threshold is None:
        return np.zeros(values.shape, bool)
    return values >= threshold


def load_onnx_model(directory: str | Path) -> OnnxModel:
    """Load `directory`/model.onnx (which directory serves is the registry's choice: registry.LiveModel).

    Refuses a file whose SHA-256 differs from metadata.json's, a directory without model.onnx
    (naming the command that writes it), and a model whose output on a blank image is not finite
    (NaN weights).
    """
    import onnxruntime as ort  # here, not at the top: importing this module stays cheap

    directory = Path(directory)
    path = directory / ONNX_FILE
    if not (directory / WEIGHTS_FILE).is_file() and not path.is_file():
        raise CheckpointError(f"no model at {directory}. Train one (`digitlib train`) or restore models/default")
    if not path.is_file():
        raise CheckpointError(
            f"{directory} has no {ONNX_FILE} (the dashboard serves that file); {export_hint(directory)}"
        )
    meta = read_metadata(directory)
    recorded = (meta.get("onnx") or {}).get("sha256")
    if not recorded:
        raise CheckpointError(
            f"{directory / METADATA_FILE} records no checksum for {ONNX_FILE}; {export_hint(directory)}"
        )
    if recorded != file_sha256(path):
        raise CheckpointError(
            f"{path}: checksum does not match {directory / METADATA_FILE}; the file was altered "
            f"({export_hint(directory)})"
        )
    options = ort.SessionOptions()
    # One thread per kernel: many visitors share few cores, and a thread pool per kernel would fight.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped errors for a bad graph
        raise CheckpointError(f"{path}: not a usable ONNX model ({e}); {export_hint(directory)}") from None
    model = OnnxModel(session, meta, directory)
    probe = model.predict_proba(np.zeros((1, 28, 28), np.uint8))
    if probe.shape != (1, 10) or not np.isfinite(probe).all():
        raise CheckpointError(f"{path}: the model gives non-finite outputs (NaN or infinite weights); refused")
    return model
