"""Calibration and the "not a digit" operating point, fitted on validation data only.

- Digits: temperature scaling (Guo et al. 2017) of the ten digit logits, the temperature that
  minimises the negative log-likelihood of the validation digits.
- Not a digit: Platt scaling of the model's own log-odds (its not-digit logit minus the
  logsumexp of the digit logits) on validation digits and held-out generated negatives.
- Operating point: the not-digit probability above which a drawing is answered "not a digit",
  the highest one that turns away at most `digit_rate` of the validation digits drawn with the
  pen augmentation (harder than clean MNIST, closer to what visitors draw).

checkpoint.calibrated applies the result (torch and the ONNX graph alike).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ECE_BINS = 15
DIGIT_REJECTION_RATE = 0.01


def ece(probabilities, labels, bins: int = ECE_BINS) -> float:
    """Expected calibration error: top-class confidence vs accuracy in `bins` equal-width bins."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels)
    if len(p) == 0:
        return float("nan")
    confidence, correct = p.max(1), p.argmax(1) == y
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # (k/bins, (k+1)/bins]
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(confidence[mask].mean() - correct[mask].mean())
    return float(total / len(p))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature minimising the NLL of softmax(logits / T) (a convex 1-D problem in 1/T)."""
    logits, labels = logits.double(), labels.long()
    grid = torch.logspace(-1.5, 1.5, 301, dtype=torch.float64)  # T from 0.03 to 30, 1% apart
    losses = torch.stack([F.cross_entropy(logits / t, labels) for t in grid])
    return float(grid[losses.argmin()])


def fit_platt(scores: torch.Tensor, positive: torch.Tensor, steps: int = 200) -> tuple[float, float]:
    """(scale, bias) of sigmoid(scale * score + bias) fitted to `positive` (bool) by logistic regression."""
    x, y = scores.double(), positive.double()
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x * params[0] + params[1], y)
        loss.backward()
        return loss

    opt.step(closure)
    scale, bias = params.detach().tolist()
    return float(scale), float(bias)


def not_digit_odds(logits: torch.Tensor) -> torch.Tensor:
    """The model's log-odds of "not a digit" (11-output logits)."""
    return logits[:, 10] - torch.logsumexp(logits[:, :10], 1)


def operating_point(not_digit_of_digits: np.ndarray, digit_rate: float = DIGIT_REJECTION_RATE) -> float:
    """The threshold that turns away at most `digit_rate` of these digits (ties stay accepted)."""
    values = np.sort(np.asarray(not_digit_of_digits, np.float64))
    if not len(values):
        return 0.5
    allowed = int(np.floor(digit_rate * len(values)))  # at most this many at or above the threshold
    # Just above the highest value among the accepted ones.
    return float(np.nextafter(values[len(values) - allowed - 1], np.inf)) if allowed < len(values) else 0.0


def fit(
    logits_digits: torch.Tensor,
    labels: torch.Tensor,
    logits_negatives: torch.Tensor | None = None,
    logits_hard_digits: torch.Tensor | None = None,
    digit_rate: float = DIGIT_REJECTION_RATE,
) -> dict:
    """What a model's metadata records: {"calibration": ..., "rejection": ...} (rejection only with negatives).

    `logits_digits`/`labels`: validation digits; `logits_negatives`: held-out generated
    non-digits; `logits_hard_digits`: the validation digits with the pen augmentation, where the
    operating point is set (the clean ones when not given).
    """
    temperature = fit_temperature(logits_digits[:, :10], labels)
    calibration = {"temperature": temperature, "fitted_on": f"{len(labels)} validation digits (NLL)"}
    out = {"calibration": calibration}
    if logits_negatives is None or logits_digits.shape[1] <= 10:
        return out
    scores = torch.cat([not_digit_odds(logits_digits), not_digit_odds(logits_negatives)])
    positive = torch.cat([torch.zeros(len(logits_digits)), torch.ones(len(logits_negatives))]).bool()
    scale, bias = fit_platt(scores, positive)
    calibration["not_digit"] = {
        "scale": scale,
        "bias": bias,
        "fitted_on": f"{len(logits_digits)} validation digits and {len(logits_negatives)} held-out generated negatives",
    }

    def nd(logits):
        return torch.sigmoid(not_digit_odds(logits.double()) * scale + bias).numpy()

    hard = logits_hard_digits if logits_hard_digits is not None else logits_digits
    threshold = operating_point(nd(hard), digit_rate)
    out["rejection"] = {
        "threshold": threshold,
        "target_digit_rate": digit_rate,
        "chosen_on": "validation digits with the pen augmentation",
        "validation": {
            "digits": float((nd(logits_digits) >= threshold).mean()),
            "pen_augmented_digits": float((nd(hard) >= threshold).mean()),
            "generated_negatives": float((nd(logits_negatives) >= threshold).mean()),
        },
    }
    return out
