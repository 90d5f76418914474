"""Model directories: weights plus the metadata that says how to rebuild and trust them.

A model directory holds `model.pt` (state dict and metadata, loaded with
`weights_only=True`, so a checkpoint can never run code), `metadata.json`, the same
metadata for people and notebooks, and `model.onnx`, the torch-free serving file
(modeling/export.py writes it, digitlib/serving.py loads it).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from digitlib import __version__
from digitlib.modeling.models import Ensemble, build_model
from digitlib.preprocess import MNIST_MEAN, MNIST_STD, standardise

# Shared with the torch-free side (registry, dashboard), so they live there.
from digitlib.serving import (
    METADATA_FILE,
    ONNX_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    file_sha256,
    is_not_digit,
    read_metadata,
    rejection_threshold,
)

FORMAT_VERSION = 1
DIGITS = 10
NOT_DIGIT = 10  # the label (and logit index) of "not a digit" in a model with 11 outputs
__all__ = ["METADATA_FILE", "ONNX_FILE", "WEIGHTS_FILE", "CheckpointError", "LoadedModel", "load_model", "save_model"]


@dataclass
class LoadedModel:
    """A model in eval mode with its metadata; normalises uint8 images the way it was trained."""

    model: nn.Module
    metadata: dict
    path: Path | None = None

    @property
    def version(self) -> str:
        return self.metadata.get("version", "unknown")

    def to_input(self, images) -> torch.Tensor:
        """uint8 (N, 28, 28) tensor or numpy array -> normalised float (N, 1, 28, 28) on the model's device."""
        norm = self.metadata["normalisation"]
        images = torch.as_tensor(images)
        x = images.to(next(self.model.parameters()).device).float().div(255.0).unsqueeze(1)
        return standardise(x, norm["mean"], norm["std"])

    @property
    def calibration(self) -> dict:
        return calibration_of(self.metadata)

    @property
    def rejection_threshold(self) -> float | None:
        return rejection_threshold(self.metadata)

    def is_not_digit(self, not_digit) -> np.ndarray:
        """Bool array: which not_digit probabilities are answered "not a digit" (as serving does)."""
        return is_not_digit(torch.as_tensor(not_digit).cpu().numpy(), self.rejection_threshold)

    @torch.inference_mode()
    def logits(self, images, batch_size: int = 2048) -> torch.Tensor:
        """Raw logits (N, 10 or 11) on the CPU, uncalibrated."""
        self.model.eval()
        out = [
            self.model(self.to_input(images[i : i + batch_size])).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, outputs_of(self.metadata))

    def predict(self, images, batch_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities (N, 10), not_digit (N,)): the same calibrated figures as serving.OnnxModel.predict."""
        c = self.calibration
        return calibrated(self.logits(images, batch_size), c["temperature"], c["not_digit_scale"], c["not_digit_bias"])

    def predict_proba(self, images, batch_size: int = 2048) -> torch.Tensor:
        """Calibrated digit probabilities (N, 10) for uint8 images (N, 28, 28), a tensor or a numpy array."""
        return self.predict(images, batch_size)[0]


def calibration_of(metadata: dict) -> dict:
    """Temperature and not-digit scale/bias recorded in metadata["calibration"]; identity when absent."""
    c = metadata.get("calibration") or {}
    nd = c.get("not_digit") or {}
    return {
        "temperature": float(c.get("temperature", 1.0)),
        "not_digit_scale": float(nd.get("scale", 1.0)),
        "not_digit_bias": float(nd.get("bias", 0.0)),
    }


def outputs_of(metadata: dict) -> int:
    """10 (digits) or 11 (digits and "not a digit")."""
    return int(metadata.get("outputs", DIGITS))


def calibrated(logits: torch.Tensor, temperature, scale, bias) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibrated (digit probabilities, not-digit probability) from raw logits; the ONNX graph runs this too.

    Digits: softmax of the ten digit logits / temperature. Not a digit (11-output models): a
    sigmoid of scale * (its logit - logsumexp of the digit logits) + bias, i.e. Platt scaling of
    the model's own log-odds; zeros for a 10-output model.
    """
    digits = logits[:, :DIGITS]
    probabilities = torch.softmax(digits / temperature, 1)
    if logits.shape[1] <= DIGITS:
        return probabilities, torch.zeros(logits.shape[0], dtype=probabilities.dtype, device=logits.device)
    odds = logits[:, NOT_DIGIT] - torch.logsumexp(digits, 1)
    return probabilities, torch.sigmoid(odds * scale + bias)


def build_for(arch: str, arch_params: dict, outputs: int = DIGITS) -> nn.Module:
    """An architecture with `outputs` outputs: its last Linear layer widened for "not a digit".

    `arch_params["members"]` > 1 builds an Ensemble of that many.
    """
    params = dict(arch_params)
    members = int(params.pop("members", 1))
    if members > 1:
        return Ensemble([build_for(arch, params, outputs) for _ in range(members)])
    model = build_model(arch, **params)
    if outputs != DIGITS:
        last = model[-1]
        if not isinstance(last, nn.Linear):
            raise ValueError(f"architecture {arch!r} does not end in a Linear layer")
        model[-1] = nn.Linear(last.in_features, outputs)
    return model


def arch_params_of(model: nn.Module) -> dict:
    """The arch_params that rebuild `model` with build_for (the registered architectures' defaults)."""
    return {"members": len(model.members)} if isinstance(model, Ensemble) else {}


def save_model(model: nn.Module, directory: str | Path, metadata: dict, onnx_check_limit: int | None = None) -> Path:
    """Write weights, metadata and the checked model.onnx into `directory`; returns the directory.

    `metadata` must name `arch` and `arch_params`; the rest (training parameters, metrics,
    data checksum...) is recorded as given, plus normalisation, version and created_at.
    `onnx_check_limit` checks the ONNX export on fewer images (tests); see export.export_onnx.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    created = datetime.now(UTC)
    meta = {
        "format_version": FORMAT_VERSION,
        "digitlib_version": __version__,
        "normalisation": {"mean": MNIST_MEAN, "std": MNIST_STD},
        "version": f"{directory.name}-{created:%Y%m%dT%H%M%SZ}",
        "created_at": created.isoformat(timespec="seconds"),
        **metadata,
    }
    for key in ("arch", "arch_params"):
        if key not in meta:
            raise ValueError(f"metadata needs {key!r}")
    # The metadata travels as JSON text: weights_only loading accepts it, and it round-trips.
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "metadata_json": json.dumps(meta)}, directory / WEIGHTS_FILE)
    meta["weights_sha256"] = file_sha256(directory / WEIGHTS_FILE)
    (directory / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (directory / ONNX_FILE).unlink(missing_ok=True)  # an older export belongs to other weights
    from digitlib.modeling.export import export_onnx  # lazy: export imports this module

    export_onnx(directory, check_limit=onnx_check_limit)
    return directory


def load_model(
    directory: str | Path | None = None,
    device: str | torch.device = "cpu",
    expect_arch: str | None = None,
) -> LoadedModel:
    """Load a model directory (default: the DIGITLIB_MODEL setting, else the registry's current version).

    The weights are checked against the SHA-256 recorded in metadata.json when present;
    `expect_arch` refuses a checkpoint of another architecture.
    """
    if directory is None:
        from digitlib.registry import resolve_model_dir

        directory = resolve_model_dir()
    directory = Path(directory)
    path = directory / WEIGHTS_FILE if directory.is_dir() else directory
    if not path.is_file():
        raise CheckpointError(
            f"no model at {path}. Train one (`digitlib train`) or restore models/default (git checkout)."
        )
    recorded = path.parent / METADATA_FILE
    if recorded.is_file():
        expected = read_metadata(path.parent).get("weights_sha256")
        if expected and expected != file_sha256(path):
            raise CheckpointError(f"{path}: checksum does not match {recorded}; the file was altered")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused: not a tensors-only checkpoint (corrupt, or holding objects that could run code)"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from e
    if not isinstance(blob, dict) or "state_dict" not in blob or "metadata_json" not in blob:
        raise CheckpointError(f"{path}: not a digitlib checkpoint (no state_dict and metadata)")
    meta = json.loads(blob["metadata_json"])
    if expect_arch and meta.get("arch") != expect_arch:
        raise CheckpointError(f"{path}: holds architecture {meta.get('arch')!r}, not {expect_arch!r}")
    try:
        model = build_for(meta["arch"], meta.get("arch_params", {}), outputs_of(meta))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build its architecture: {e}") from e
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: weights do not fit architecture {meta['arch']!r} {meta.get('arch_params')}: {e}"
        ) from e
    bad = [k for k, v in blob["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: refused: non-finite weights (NaN or infinite) in {', '.join(bad[:3])}")
    model.to(device).eval()
    return LoadedModel(model=model, metadata=meta, path=directory)
