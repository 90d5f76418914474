"""Recorded drawings (JSON lines of strokes on the 280x280 canvas) and their evaluation.

Each drawing goes through exactly the dashboard's path (preprocess.strokes_to_input), so the
figures here are what a visitor of the dashboard gets.
"""

from __future__ import annotations

import itertools
import json
import reprlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from digitlib.dataset import DataError, Digits
from digitlib.modeling.checkpoint import LoadedModel
from digitlib.modeling.predict import Evaluation, evaluate
from digitlib.preprocess import DEFAULT_BRUSH, Brush, DrawingError, strokes_to_input, validate_strokes


@dataclass
class Drawing:
    strokes: list
    label: int
    source: str = "unknown"
    writer: str = ""


MAX_LINE_BYTES = 1_000_000  # a drawing within preprocess's limits takes well under this
EVAL_BATCH = 1024  # drawings rendered and predicted at a time: memory stays flat for any file size


def iter_drawings(path: str | Path) -> Iterator[tuple[int, Drawing]]:
    """(line number, drawing) for each drawing in a JSON-lines file, read one line at a time.

    Every drawing is checked as the dashboard checks one (preprocess.validate_strokes); a bad
    line is a DataError naming the file and line, whatever is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such drawings file")
    with path.open("rb") as f:
        for number in itertools.count(1):
            line = f.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            if len(line) > MAX_LINE_BYTES:
                raise DataError(f"{path}, line {number}: longer than {MAX_LINE_BYTES} bytes, not a drawing")
            if line.strip():
                yield number, _parse_drawing(line, f"{path}, line {number}")


def _parse_drawing(line: bytes, where: str) -> Drawing:
    try:
        row = json.loads(line)
        if not isinstance(row, dict):
            raise ValueError(f"a drawing is a JSON object, not {type(row).__name__}")
        label = row["label"]
        # bool is an int in Python: `true` is not a 1.
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
            raise ValueError(f"label {reprlib.repr(label)} is not a digit 0-9")
        validate_strokes(row["strokes"])
        source, writer = str(row.get("source", "unknown"))[:200], str(row.get("writer", ""))[:200]
        return Drawing(row["strokes"], label, source, writer)
    except KeyError as e:
        raise DataError(f"{where}: no {e} field") from None
    # Overflow: a 400-digit coordinate; Recursion: absurdly nested JSON; Unicode: not UTF-8.
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise DataError(f"{where}: {str(e)[:300]}") from None


def load_drawings(path: str | Path) -> list[Drawing]:
    """Read a JSON-lines file of drawings; a bad line is an error naming the file and line."""
    return [drawing for _, drawing in iter_drawings(path)]


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
    return Digits(torch.from_numpy(np.stack(images)), torch.tensor([d.label for d in drawings]))


@dataclass
class DrawingsEvaluation:
    evaluation: Evaluation
    sources: list[str]
    digits: Digits | None = None  # the rendered inputs; None when streamed from a file (evaluate_drawings_file)

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


def evaluate_drawings_file(
    model: LoadedModel, path: str | Path, brush: Brush = DEFAULT_BRUSH, batch: int = EVAL_BATCH
) -> DrawingsEvaluation:
    """Evaluate on a drawings file of any size: read, rendered and predicted `batch` drawings at a time.

    Only the probabilities are kept (40 bytes a drawing), not the images. A file without a
    drawing is an error: there is no accuracy to report.
    """
    probabilities, labels, sources = [], [], []
    pending: list[tuple[int, Drawing]] = []

    def predict() -> None:
        images = []
        for number, d in pending:
            try:
                images.append(np.asarray(strokes_to_input(d.strokes, brush)))
            except DrawingError as e:
                raise DataError(f"{path}, line {number}: {e}") from None
        probabilities.append(model.predict_proba(np.stack(images)))
        labels.extend(d.label for _, d in pending)
        sources.extend(d.source for _, d in pending)
        pending.clear()

    for item in iter_drawings(path):
        pending.append(item)
        if len(pending) == batch:
            predict()
    if pending:
        predict()
    if not labels:
        raise DataError(f"{path}: no drawings in the file, so no accuracy to report")
    return DrawingsEvaluation(Evaluation(torch.cat(probabilities), torch.tensor(labels)), sources)
