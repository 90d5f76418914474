"""Write a model directory's `model.onnx` (the torch-free serving file) and prove it matches.

The graph takes uint8 images (N, 28, 28) with a dynamic batch, normalises them as in
training, and outputs `logits` (raw), `probabilities` (the calibrated digit probabilities:
softmax of the ten digit logits / `temperature`) and `not_digit` (the calibrated probability
that the drawing is no digit; zeros for a 10-output model), with the calibration recorded in
metadata["calibration"] as named initializers (checkpoint.calibrated is the formula). It is exported
with torch.onnx's torch.export-based exporter (`dynamo=True`, the supported one since
torch 2.9; the TorchScript one is deprecated), unoptimised so `temperature` stays a named
initializer: ONNX Runtime fuses the graph itself when it loads it.

Before the file replaces any previous one, ONNX Runtime and torch predict the whole MNIST
test set and the pen-digit dev set: the same classes everywhere and probabilities within
1e-4 (a tie at float precision excepted, see TIE), or the export is refused. Its SHA-256,
opset and runtime version go into metadata.json.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from digitlib import config
from digitlib.modeling.checkpoint import calibrated, calibration_of
from digitlib.preprocess import standardise
from digitlib.serving import (
    INPUT_NAME,
    METADATA_FILE,
    NOT_DIGIT_OUTPUT,
    ONNX_FILE,
    OUTPUT_NAMES,
    CheckpointError,
    file_sha256,
    read_metadata,
)

PROBABILITY_TOLERANCE = 1e-4
# Two classes whose torch probabilities are this close are a tie at float32 precision: either
# answer is the model's, so a flipped tie is not a different prediction (random test weights
# have such ties; trained models practically never). Ties are counted in the metadata.
TIE = 1e-6
TEMPERATURE = "temperature"
GRAPH_PROPS = ("calibration", "rejection")  # metadata entries also kept in the ONNX file's metadata_props
log = logging.getLogger(__name__)


class ExportError(CheckpointError):
    """An ONNX export that does not reproduce the torch model: refused, nothing replaced."""


class ServingGraph(nn.Module):
    """uint8 images -> (logits, probabilities, not_digit): everything the dashboard needs in one graph."""

    def __init__(self, model: nn.Module, mean: float, std: float, calibration: dict | None = None):
        super().__init__()
        self.model = model
        self.mean, self.std = float(mean), float(std)
        c = calibration or calibration_of({})
        self.register_buffer(TEMPERATURE, torch.tensor(c["temperature"]))
        self.register_buffer("not_digit_scale", torch.tensor(c["not_digit_scale"]))
        self.register_buffer("not_digit_bias", torch.tensor(c["not_digit_bias"]))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = standardise(images.float().div(255.0).unsqueeze(1), self.mean, self.std)
        logits = self.model(x).float()
        probabilities, not_digit = calibrated(logits, self.temperature, self.not_digit_scale, self.not_digit_bias)
        return logits, probabilities, not_digit


def _graph(model: nn.Module, metadata: dict) -> ServingGraph:
    norm = metadata["normalisation"]
    return ServingGraph(model, norm["mean"], norm["std"], calibration_of(metadata)).cpu().eval()


def export_graph(model: nn.Module, metadata: dict, path: Path) -> None:
    """Export `model` (eval mode, on CPU) with its normalisation and calibration to the ONNX file `path`."""
    graph = _graph(model, metadata)
    example = (torch.zeros(2, 28, 28, dtype=torch.uint8),)
    quiet = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)  # the exporter's notes on its own passes are no news to a user
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            example,
            None,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[*OUTPUT_NAMES, NOT_DIGIT_OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            optimize=False,  # keeps `temperature` a named initializer
            verbose=False,
        )
    for logger, level in zip(quiet, levels, strict=True):
        logger.setLevel(level)
    program.save(str(path), external_data=False)


def record_in_graph(path: Path, metadata: dict) -> None:
    """Write the calibration and the not-digit operating point into the ONNX file's metadata_props too,
    so the file alone says how its outputs were calibrated and where "not a digit" starts."""
    import onnx

    graph = onnx.load(str(path))
    props = {key: json.dumps(metadata.get(key)) for key in GRAPH_PROPS}
    onnx.helper.set_model_props(graph, props)
    onnx.save(graph, str(path))


# --- the check -------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _pen_digits(path: str, limit: int | None) -> np.ndarray:
    from digitlib.drawings import drawings_to_digits, load_drawings

    return drawings_to_digits(load_drawings(path)[:limit]).images.numpy()


def check_sets(limit: int | None = None) -> dict[str, np.ndarray]:
    """The images every export is checked on: MNIST test and the pen-digit dev set (first `limit` of each)."""
    from digitlib.dataset import load_mnist

    mnist = load_mnist("test").images.numpy()
    pen = _pen_digits(str(config.DRAWINGS_FILE.get()), limit)
    return {"mnist_test": mnist[:limit], "pen_digits": pen[:limit]}


def compare(model: nn.Module, metadata: dict, path: Path, sets: dict[str, np.ndarray]) -> dict:
    """Run torch and ONNX Runtime over `sets`; raise ExportError unless they agree."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph = _graph(model, metadata)
    figures = {}
    for name, images in sets.items():
        with torch.inference_mode():
            outputs = [graph(torch.from_numpy(images[i : i + 1024]))[1:] for i in range(0, len(images), 1024)]
        expected = torch.cat([o[0] for o in outputs]).numpy() if outputs else np.zeros((0, 10), np.float32)
        expected_nd = torch.cat([o[1] for o in outputs]).numpy() if outputs else np.zeros(0, np.float32)
        got, got_nd = session.run([OUTPUT_NAMES[1], NOT_DIGIT_OUTPUT], {INPUT_NAME: images})
        if len(images):
            nd_worst = float(np.abs(expected_nd - got_nd).max())
            if not np.isfinite(got_nd).all() or nd_worst > PROBABILITY_TOLERANCE:
                raise ExportError(
                    f"ONNX export refused: on {name}, not_digit differs from torch by up to {nd_worst:.2e} "
                    f"(allowed {PROBABILITY_TOLERANCE:.0e})"
                )
        if not (np.isfinite(expected).all() and np.isfinite(got).all()):
            raise ExportError(f"{path}: non-finite probabilities on {name} (NaN or infinite weights); refused")
        top2 = np.sort(expected, 1)[:, -2:] if len(images) else np.zeros((0, 2))
        tie = top2[:, 1] - top2[:, 0] <= TIE
        flipped = expected.argmax(1) != got.argmax(1)
        differ = int((flipped & ~tie).sum())
        worst = float(np.abs(expected - got).max()) if len(images) else 0.0
        if differ or worst > PROBABILITY_TOLERANCE:
            raise ExportError(
                f"ONNX export refused: on {name}, {differ} of {len(images)} predicted classes differ from torch "
                f"and probabilities differ by up to {worst:.2e} (allowed {PROBABILITY_TOLERANCE:.0e})"
            )
        figures[name] = {
            "n": len(images),
            "same_class": len(images) - int(flipped.sum()),
            "ties_flipped": int(flipped.sum()),
            "max_probability_difference": worst,
        }
    return figures


# --- the model directory ---------------------------------------------------------------------


def export_onnx(directory: str | Path, check_limit: int | None = None) -> dict:
    """Write (or refresh) `directory`/model.onnx from its model.pt, checked; returns the metadata's `onnx` entry.

    `check_limit` checks only the first images of each set (tiny test models); by default the
    DIGITLIB_ONNX_CHECK setting, else every image. The previous model.onnx stays until the new
    one passed.
    """
    import onnx
    import onnxruntime as ort

    from digitlib.modeling.checkpoint import load_model

    directory = Path(directory)
    loaded = load_model(directory)
    meta = read_metadata(directory)
    if check_limit is None and config.ONNX_CHECK.get():
        check_limit = int(config.ONNX_CHECK.get())
    temporary = directory / f".{ONNX_FILE}.{os.getpid()}.tmp"
    try:
        export_graph(loaded.model, loaded.metadata, temporary)
        record_in_graph(temporary, loaded.metadata)
        checked = compare(loaded.model, loaded.metadata, temporary, check_sets(check_limit))
        opset = next(
            o.version
            for o in onnx.load(str(temporary), load_external_data=False).opset_import
            if o.domain in ("", "ai.onnx")
        )
        entry = {
            "file": ONNX_FILE,
            "sha256": file_sha256(temporary),
            "opset": opset,
            "onnxruntime_version": ort.__version__,
            "torch_version": torch.__version__,
            "source_weights_sha256": meta.get("weights_sha256"),  # the .pt it was exported from
            "temperature": calibration_of(loaded.metadata)["temperature"],
            "outputs": [*OUTPUT_NAMES, NOT_DIGIT_OUTPUT],
            "checked": checked,
        }
        os.replace(temporary, directory / ONNX_FILE)
    finally:
        temporary.unlink(missing_ok=True)
    meta["onnx"] = entry
    _write_json(directory / METADATA_FILE, meta)
    log.info("wrote %s (checked on %s)", directory / ONNX_FILE, ", ".join(f"{k} {v['n']}" for k, v in checked.items()))
    return entry


def onnx_is_current(directory: str | Path) -> bool:
    """True when model.onnx exists and was exported from the model.pt now in `directory`."""
    directory = Path(directory)
    meta = read_metadata(directory)
    entry = meta.get("onnx") or {}
    return (
        (directory / ONNX_FILE).is_file()
        and bool(entry.get("sha256"))
        and (entry.get("source_weights_sha256") == meta.get("weights_sha256"))
    )


def _write_json(path: Path, data: dict) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)
