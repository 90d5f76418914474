"""Recorded drawings (JSON lines of strokes on the 280x280 canvas) and their evaluation.

Each drawing goes through exactly the dashboard's path (preprocess.strokes_to_input), so the
figures here are what a visitor of the dashboard gets. A drawing's label is a digit 0-9, or
null for a drawing that is not a digit (the model should answer "not a digit").
"""

from __future__ import annotations

import itertools
import json
import reprlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from digitlib.dataset import DataError, Digits
from digitlib.modeling.predict import Evaluation
from digitlib.preprocess import DEFAULT_BRUSH, BatchDrawingError, Brush, render_drawings, validate_strokes

if TYPE_CHECKING:  # a type only: the models are passed in, never loaded here
    from digitlib.modeling.checkpoint import LoadedModel


@dataclass
class Drawing:
    strokes: list
    label: int | None  # None: not a digit
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
        # bool is an int in Python: `true` is not a 1. null: a drawing that is not a digit.
        if label is not None and (isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9):
            raise ValueError(f"label {reprlib.repr(label)} is neither a digit 0-9 nor null (not a digit)")
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
    """Render digit drawings as model inputs; a drawing that cannot be rendered is an error naming it."""
    for i, d in enumerate(drawings):
        if d.label is None:
            raise DataError(f"drawing {i} ({d.source} {d.writer}) is labelled not a digit; Digits hold digits only")
    try:
        images, _ = render_drawings((d.strokes for d in drawings), brush)
    except BatchDrawingError as e:
        d = drawings[e.index]
        raise DataError(f"drawing {e.index} ({d.source} {d.writer}): {e.reason}") from None
    return Digits(torch.from_numpy(images), torch.tensor([d.label for d in drawings], dtype=torch.long))


@dataclass
class DrawingsEvaluation:
    evaluation: Evaluation  # the digit drawings
    sources: list[str]
    digits: Digits | None = None  # the rendered inputs; None when streamed from a file (evaluate_drawings_file)
    rejected: np.ndarray | None = None  # per digit drawing: answered "not a digit"
    non_digit_rejected: np.ndarray | None = None  # per non-digit drawing: answered "not a digit"
    non_digit_sources: list[str] | None = None

    def per_source(self) -> dict[str, dict]:
        correct = self.evaluation.correct
        out = {}
        for source in sorted(set(self.sources)):
            mask = torch.tensor([s == source for s in self.sources])
            out[source] = {"accuracy": correct[mask].float().mean().item(), "n": int(mask.sum())}
        return out

    def non_digits_per_source(self) -> dict[str, dict]:
        """Share of each source's non-digit drawings answered "not a digit"."""
        rejected, sources = self.non_digit_rejected, self.non_digit_sources or []
        out = {}
        for source in sorted(set(sources)):
            mask = np.array([s == source for s in sources])
            out[source] = {"rejected": float(rejected[mask].mean()), "n": int(mask.sum())}
        return out

    def summary(self) -> dict:
        """Figures over the digit drawings (accuracy: top digit class; ECE, 15 bins) and the rejection rates.

        A file of only non-digit drawings has accuracy None and `n` counting them.
        """
        from digitlib.calibration import ece

        n_non = 0 if self.non_digit_rejected is None else len(self.non_digit_rejected)
        rejection = {
            "digits": None if self.rejected is None or not len(self.rejected) else float(self.rejected.mean()),
            "non_digits": float(self.non_digit_rejected.mean()) if n_non else None,
        }
        if not self.evaluation.n:
            return {"accuracy": None, "n": n_non, "non_digits": n_non, "ece": None, "rejection": rejection,
                    "non_digit_sources": self.non_digits_per_source()}  # fmt: skip
        ev = self.evaluation.summary()
        return {
            "accuracy": ev["accuracy"],
            "n": ev["n"],
            "errors": ev["errors"],
            "per_source": self.per_source(),
            "per_class_accuracy": ev["per_class_accuracy"],
            "mean_confidence": ev["mean_confidence"],
            "ece": ece(self.evaluation.probabilities.numpy(), self.evaluation.labels.numpy()),
            "non_digits": n_non,
            "rejection": rejection,
            "non_digit_sources": self.non_digits_per_source(),
        }


def _predict(model, images: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """(digit probabilities, answered "not a digit") from a LoadedModel or a serving OnnxModel.

    Anything with only predict_proba (a stand-in) never answers "not a digit".
    """
    if not hasattr(model, "predict"):
        return torch.as_tensor(np.asarray(model.predict_proba(images))), np.zeros(len(images), bool)
    probabilities, not_digit = model.predict(images)
    return torch.as_tensor(np.asarray(probabilities)), model.is_not_digit(np.asarray(not_digit))


def evaluate_drawings(model: LoadedModel, drawings: list[Drawing], brush: Brush = DEFAULT_BRUSH) -> DrawingsEvaluation:
    """Evaluate drawings held in memory (digits and non-digits, as evaluate_drawings_file does)."""
    digit_drawings = [d for d in drawings if d.label is not None]
    others = [d for d in drawings if d.label is None]
    digits = drawings_to_digits(digit_drawings, brush)
    probabilities, rejected = _predict(model, digits.images.numpy())
    non_rejected = _predict(model, render_drawings((d.strokes for d in others), brush)[0])[1] if others else None
    return DrawingsEvaluation(
        Evaluation(probabilities, digits.labels),
        [d.source for d in digit_drawings],
        digits,
        rejected,
        non_rejected,
        [d.source for d in others],
    )


def evaluate_drawings_file(
    model: LoadedModel, path: str | Path, brush: Brush = DEFAULT_BRUSH, batch: int = EVAL_BATCH
) -> DrawingsEvaluation:
    """Evaluate on a drawings file of any size: read, rendered and predicted `batch` drawings at a time.

    Only the probabilities and the rejections are kept (~41 bytes a drawing), not the images.
    Lines labelled null (not a digit) count towards the rejection figures only. A file without
    a drawing is an error: there is nothing to report.
    """
    probabilities, rejected, labels, sources = [], [], [], []
    pending: list[tuple[int, Drawing]] = []

    def predict() -> None:
        try:
            images, _ = render_drawings((d.strokes for _, d in pending), brush)
        except BatchDrawingError as e:
            raise DataError(f"{path}, line {pending[e.index][0]}: {e.reason}") from None
        p, r = _predict(model, images)
        probabilities.append(p)
        rejected.append(r)
        labels.extend(-1 if d.label is None else d.label for _, d in pending)
        sources.extend(d.source for _, d in pending)
        pending.clear()

    for item in iter_drawings(path):
        pending.append(item)
        if len(pending) == batch:
            predict()
    if pending:
        predict()
    if not labels:
        raise DataError(f"{path}: no drawings in the file, so nothing to report")
    labels_t, rejected_all = torch.tensor(labels), np.concatenate(rejected)
    digit_mask = labels_t >= 0
    is_digit = digit_mask.numpy()
    digit_sources = [s for s, keep in zip(sources, is_digit, strict=True) if keep]
    non_sources = [s for s, keep in zip(sources, is_digit, strict=True) if not keep]
    return DrawingsEvaluation(
        Evaluation(torch.cat(probabilities)[digit_mask], labels_t[digit_mask]),
        digit_sources,
        None,
        rejected_all[is_digit],
        rejected_all[~is_digit],
        non_sources,
    )
