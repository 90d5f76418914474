"""Recorded drawings (JSON lines of strokes on the 280x280 canvas) and their evaluation.

Each drawing goes through exactly the dashboard's path (preprocess.strokes_to_input), so the
figures here are what a visitor of the dashboard gets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from digitlib.dataset import DataError, Digits
from digitlib.modeling.checkpoint import LoadedModel
from digitlib.modeling.predict import Evaluation, evaluate
from digitlib.preprocess import DEFAULT_BRUSH, Brush, DrawingError, strokes_to_input


@dataclass
class Drawing:
    strokes: list
    label: int
    source: str = "unknown"
    writer: str = ""


def load_drawings(path: str | Path) -> list[Drawing]:
    """Read a JSON-lines file of drawings; a bad line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such drawings file")
    drawings = []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                label = row["label"]
                if not isinstance(label, int) or not 0 <= label <= 9:
                    raise ValueError(f"label {label!r} is not a digit 0-9")
                source, writer = str(row.get("source", "unknown")), str(row.get("writer", ""))
                drawings.append(Drawing(row["strokes"], label, source, writer))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise DataError(f"{path}, line {number}: {e}") from None
    return drawings


def drawings_to_digits(drawings: list[Drawing], brush: Brush = DEFAULT_BRUSH) -> Digits:
    """Render drawings as model inputs; a drawing that cannot be rendered is an error naming it."""
    images = []
    for i, d in enumerate(drawings):
        try:
            images.append(strokes_to_input(d.strokes, brush))
        except DrawingError as e:
            raise DataError(f"drawing {i} ({d.source} {d.writer}): {e}") from None
    if not images:
        return Digits(torch.empty(0, 28, 28, dtype=torch.uint8), torch.empty(0, dtype=torch.long))
    return Digits(torch.stack(images), torch.tensor([d.label for d in drawings]))


@dataclass
class DrawingsEvaluation:
    evaluation: Evaluation
    sources: list[str]
    digits: Digits

    def per_source(self) -> dict[str, dict]:
        correct = self.evaluation.correct
        out = {}
        for source in sorted(set(self.sources)):
            mask = torch.tensor([s == source for s in self.sources])
            out[source] = {"accuracy": correct[mask].float().mean().item(), "n": int(mask.sum())}
        return out

    def summary(self) -> dict:
        ev = self.evaluation.summary()
        return {
            "accuracy": ev["accuracy"],
            "n": ev["n"],
            "errors": ev["errors"],
            "per_source": self.per_source(),
            "per_class_accuracy": ev["per_class_accuracy"],
            "mean_confidence": ev["mean_confidence"],
        }


def evaluate_drawings(model: LoadedModel, drawings: list[Drawing], brush: Brush = DEFAULT_BRUSH) -> DrawingsEvaluation:
    digits = drawings_to_digits(drawings, brush)
    return DrawingsEvaluation(evaluate(model, digits), [d.source for d in drawings], digits)
