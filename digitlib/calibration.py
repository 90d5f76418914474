"""Calibration and the "not a digit" operating point, fitted on validation data only.

- Digits: temperature scaling (Guo et al. 2017) of the ten digit logits, the temperature that
  minimises the negative log-likelihood of the validation digits.
- Not a digit: Platt scaling of the model's own log-odds (its not-digit logit minus the
  logsumexp of the digit logits) on validation digits and held-out generated negatives.
- Operating point: the not-digit probability from which a drawing is answered "not a digit".
  Rule, fixed before it was judged (`operating_point_rule`): the lowest threshold that answers
  at most PEN_DIGIT_RATE (1%, half the 2% goal: a margin for writers of other sites) of the pen
  digits (the digits visitors draw, all sites pooled) "not a digit", and never below the one
  that does so for the validation digits drawn with the pen augmentation. Judged
  leave-one-site-out (`leave_one_site_out`): fitted on five sites, measured on the sixth;
  that is the pen-digit rejection to report. Without pen digits: the validation rule alone.

checkpoint.calibrated applies the result (torch and the ONNX graph alike).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ECE_BINS = 15
DIGIT_REJECTION_RATE = 0.01
PEN_DIGIT_RATE = 0.01
RULE = (
    "the lowest not-digit probability that answers at most {rate:.0%} of the pen digits (sites pooled) "
    "'not a digit', and at least the one that does so for the pen-augmented validation digits"
)


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


def operating_point_rule(not_digit_of_pen, floor: float, rate: float = PEN_DIGIT_RATE) -> float:
    """The recorded rule: at most `rate` of the pen digits turned away, and not below `floor`
    (the point that does so for the pen-augmented validation digits)."""
    return max(operating_point(not_digit_of_pen, rate), floor)


def leave_one_site_out(
    not_digit_of_pen: np.ndarray,
    sites,
    floor: float,
    not_digit_of_others: dict[str, np.ndarray] | None = None,
    rate: float = PEN_DIGIT_RATE,
) -> dict:
    """The rule judged on writers it was not fitted to: for each site, the threshold fitted on the
    other sites, the share of this site's digits it turns away and the share of each set of
    non-digits in `not_digit_of_others` it turns away; then the mean and worst over sites."""
    pen, sites = np.asarray(not_digit_of_pen, np.float64), np.asarray(sites)
    others = not_digit_of_others or {}
    folds = {}
    for site in sorted(set(sites.tolist())):
        held_out = sites == site
        threshold = operating_point_rule(pen[~held_out], floor, rate)
        folds[site] = {
            "n": int(held_out.sum()),
            "threshold": threshold,
            "digits": float((pen[held_out] >= threshold).mean()),
            **{name: float((np.asarray(v) >= threshold).mean()) for name, v in others.items()},
        }
    out = {"sites": folds}
    for key in ["digits", *others]:
        values = [fold[key] for fold in folds.values()]
        out[key] = {"mean": float(np.mean(values)), "worst": float(max(values) if key == "digits" else min(values))}
    return out


def fit(
    logits_digits: torch.Tensor,
    labels: torch.Tensor,
    logits_negatives: torch.Tensor | None = None,
    logits_hard_digits: torch.Tensor | None = None,
    digit_rate: float = DIGIT_REJECTION_RATE,
    pen_digits: torch.Tensor | None = None,
    pen_sites: list[str] | None = None,
) -> dict:
    """What a model's metadata records: {"calibration": ..., "rejection": ...} (rejection only with negatives).

    `logits_digits`/`labels`: validation digits; `logits_negatives`: held-out generated
    non-digits; `logits_hard_digits`: the validation digits with the pen augmentation (the clean
    ones when not given); `pen_digits`/`pen_sites`: logits and site of the drawn pen digits,
    where the operating point is set by `operating_point_rule` and judged leave-one-site-out.
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
    validation = {"digits": nd(logits_digits), "pen_augmented_digits": nd(hard)}
    validation["generated_negatives"] = nd(logits_negatives)
    if pen_digits is None or not len(pen_digits):
        threshold = operating_point(validation["pen_augmented_digits"], digit_rate)
        rejection = {"threshold": threshold, "target_digit_rate": digit_rate}
        rejection["chosen_on"] = "validation digits with the pen augmentation"
    else:
        if pen_sites is None or len(pen_sites) != len(pen_digits):
            raise ValueError("pen_sites must give the site of every pen digit")
        pen = nd(pen_digits)
        floor = operating_point(validation["pen_augmented_digits"], PEN_DIGIT_RATE)
        threshold = operating_point_rule(pen, floor, PEN_DIGIT_RATE)
        rejection = {"threshold": threshold, "target_digit_rate": PEN_DIGIT_RATE, "floor": floor}
        rejection["rule"] = RULE.format(rate=PEN_DIGIT_RATE)
        rejection["chosen_on"] = (
            f"{len(pen)} pen digits of {len(set(pen_sites))} sites and {len(hard)} pen-augmented validation digits"
        )
        validation["pen_digits"] = pen
        others = {"generated_negatives": validation["generated_negatives"]}
        rejection["leave_one_site_out"] = leave_one_site_out(pen, pen_sites, floor, others)
    rejection["validation"] = {name: float((v >= threshold).mean()) for name, v in validation.items()}
    out["rejection"] = rejection
    return out
