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

import torch
from torch import nn

from digitlib import __version__
from digitlib.dataset import MNIST_MEAN, MNIST_STD
from digitlib.modeling.models import build_model

# Shared with the torch-free side (registry, dashboard), so they live there.
from digitlib.serving import METADATA_FILE, ONNX_FILE, WEIGHTS_FILE, CheckpointError, file_sha256, read_metadata

FORMAT_VERSION = 1
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
        return (x - norm["mean"]) / norm["std"]

    @torch.inference_mode()
    def predict_proba(self, images, batch_size: int = 2048) -> torch.Tensor:
        """Class probabilities (N, 10) for uint8 images (N, 28, 28), a tensor or a numpy array."""
        self.model.eval()
        out = [
            torch.softmax(self.model(self.to_input(images[i : i + batch_size])).float(), 1).cpu()
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, 10)


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
    """Load a model directory (default: the DIGITLIB_MODEL setting, else models/default).

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
        model = build_model(meta["arch"], **meta.get("arch_params", {}))
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
