"""Evaluation: accuracy, per-class accuracy, confusion matrix, errors and (calibrated) confidence."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from digitlib.calibration import ece
from digitlib.dataset import Digits
from digitlib.modeling.checkpoint import LoadedModel


def _as_long(values) -> torch.Tensor:
    # np.array copies: pandas hands out read-only arrays, which torch would warn about sharing.
    return values.long() if isinstance(values, torch.Tensor) else torch.from_numpy(np.array(values, dtype=np.int64))


def confusion_counts(labels, predictions) -> torch.Tensor:
    """10x10 counts of (true label, prediction) pairs: rows are labels, columns predictions."""
    flat = _as_long(labels) * 10 + _as_long(predictions)
    return torch.bincount(flat, minlength=100).reshape(10, 10)


@dataclass
class Evaluation:
    """Predictions of a model on a set of digits, with the figures derived from them."""

    probabilities: torch.Tensor  # (N, 10)
    labels: torch.Tensor  # (N,)

    @property
    def predictions(self) -> torch.Tensor:
        return self.probabilities.argmax(1)

    @property
    def confidence(self) -> torch.Tensor:
        return self.probabilities.max(1).values

    @property
    def correct(self) -> torch.Tensor:
        return self.predictions == self.labels

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def accuracy(self) -> float:
        return self.correct.float().mean().item() if self.n else float("nan")

    def confusion_matrix(self) -> torch.Tensor:
        """Counts: rows are true labels, columns predictions."""
        return confusion_counts(self.labels, self.predictions)

    def per_class_accuracy(self) -> list[float | None]:
        cm = self.confusion_matrix()
        totals = cm.sum(1)
        return [(cm[i, i] / totals[i]).item() if totals[i] else None for i in range(10)]

    def misclassified(self) -> torch.Tensor:
        """Indices of the wrong predictions, most confident first."""
        wrong = (~self.correct).nonzero().flatten()
        return wrong[self.confidence[wrong].argsort(descending=True)]

    def summary(self) -> dict:
        """JSON-ready figures (no per-image data)."""
        conf, correct = self.confidence, self.correct
        nll = -torch.log(self.probabilities[torch.arange(self.n), self.labels].clamp_min(1e-12))
        return {
            "accuracy": self.accuracy,
            "n": self.n,
            "errors": int((~correct).sum()),
            "per_class_accuracy": self.per_class_accuracy(),
            "confusion_matrix": self.confusion_matrix().tolist(),
            "mean_confidence": conf.mean().item() if self.n else None,
            "mean_confidence_correct": conf[correct].mean().item() if correct.any() else None,
            "mean_confidence_wrong": conf[~correct].mean().item() if (~correct).any() else None,
            "nll": nll.mean().item() if self.n else None,
            "ece": ece(self.probabilities.numpy(), self.labels.numpy()) if self.n else None,  # 15 bins
            "misclassified": self.misclassified().tolist(),
        }


def evaluate(model: LoadedModel, digits: Digits) -> Evaluation:
    """Run `model` over all of `digits`."""
    return Evaluation(model.predict_proba(digits.images), digits.labels.cpu())
