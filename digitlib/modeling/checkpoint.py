"""Model directories: weights plus the metadata that says how to rebuild and trust them.

A model directory holds `model.pt` (state dict and metadata, loaded with
`weights_only=True`, so a checkpoint can never run code) and `metadata.json`, the same
metadata for people and notebooks.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from digitlib import __version__, config
from digitlib.dataset import MNIST_MEAN, MNIST_STD
from digitlib.modeling.models import build_model

WEIGHTS_FILE = "model.pt"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A model file that is missing, unsafe, corrupt or for another architecture."""


@dataclass
class LoadedModel:
    """A model in eval mode with its metadata; normalises uint8 images the way it was trained."""

    model: nn.Module
    metadata: dict
    path: Path | None = None

    @property
    def version(self) -> str:
        return self.metadata.get("version", "unknown")

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 28, 28) -> normalised float (N, 1, 28, 28) on the model's device."""
        norm = self.metadata["normalisation"]
        x = images.to(next(self.model.parameters()).device).float().div(255.0).unsqueeze(1)
        return (x - norm["mean"]) / norm["std"]

    @torch.inference_mode()
    def predict_proba(self, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        """Class probabilities (N, 10) for uint8 images (N, 28, 28)."""
        self.model.eval()
        out = [
            torch.softmax(self.model(self.to_input(images[i : i + batch_size])).float(), 1).cpu()
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, 10)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_model(model: nn.Module, directory: str | Path, metadata: dict) -> Path:
    """Write weights and metadata into `directory`; returns the directory.

    `metadata` must name `arch` and `arch_params`; the rest (training parameters, metrics,
    data checksum...) is recorded as given, plus normalisation, version and created_at.
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
    return directory


def load_model(
    directory: str | Path | None = None,
    device: str | torch.device = "cpu",
    expect_arch: str | None = None,
) -> LoadedModel:
    """Load a model directory (default: the DIGITLIB_MODEL setting, else models/default).

    The weights are checked against the SHA-256 recorded in metadata.json when present;
    `expect_arch` refuses a checkpoint of another architecture.
    """
    directory = Path(directory or config.MODEL_DIR.get())
    path = directory / WEIGHTS_FILE if directory.is_dir() else directory
    if not path.is_file():
        raise CheckpointError(
            f"no model at {path}. Train one (`digitlib train`) or restore models/default (git checkout)."
        )
    recorded = path.parent / METADATA_FILE
    if recorded.is_file():
        expected = json.loads(recorded.read_text()).get("weights_sha256")
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
        model = build_model(meta["arch"], **meta.get("arch_params", {}))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build its architecture: {e}") from e
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: weights do not fit architecture {meta['arch']!r} {meta.get('arch_params')}: {e}"
        ) from e
    model.to(device).eval()
    return LoadedModel(model=model, metadata=meta, path=directory)
