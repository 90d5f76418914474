"""Honest answers (issue 14): calibration (ECE, 15 bins) and "not a digit" rejection of a model.

For MNIST test and the pen digits: accuracy (top digit class), ECE before calibration
(temperature 1, the raw digit softmax) and after (the recorded calibration, as served), share
answered "not a digit". For the non-digit dev set (never trained or tuned on) and generated
negatives (validation glyphs, fitted on; held-out fonts, never trained nor fitted on): share
answered "not a digit", per source. When the operating point was fitted on the pen digits, their
rejection at it is in-sample: the honest figure is `leave_one_site_out` (the same rule fitted on
five sites, measured on the sixth, with the non-digit shares at each of those thresholds).
Figures come from the served ONNX model (what a visitor gets); its torch twin gives the
uncalibrated "before".

    .venv/bin/python benchmarks/honest_answers.py [--model models/default] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from digitlib import config
from digitlib.calibration import PEN_DIGIT_RATE, ece, leave_one_site_out
from digitlib.dataset import load_mnist
from digitlib.drawings import load_drawings
from digitlib.modeling.checkpoint import load_model
from digitlib.negatives import negative_images
from digitlib.preprocess import render_drawings
from digitlib.serving import load_onnx_model

NON_DIGITS = config.SHARED_DATA_DIR / "non-digits" / "dev.jsonl"
GENERATED = 2_000
GENERATED_SEED = 7  # not the training seeds (1000, 2000 + recipe seed)


def digit_figures(served, torch_model, images: np.ndarray, labels: np.ndarray) -> dict:
    probabilities, not_digit = served.predict(images)
    raw = torch.softmax(torch_model.logits(images)[:, :10], 1).numpy()
    return {
        "n": len(labels),
        "accuracy": float((probabilities.argmax(1) == labels).mean()),
        "ece_before": ece(raw, labels),
        "ece_after": ece(probabilities, labels),
        "mean_confidence_before": float(raw.max(1).mean()),
        "mean_confidence_after": float(probabilities.max(1).mean()),
        "rejected": float(served.is_not_digit(not_digit).mean()),
    }


def rejected_per_source(served, images: np.ndarray, sources: list[str]) -> dict:
    rejected = served.is_not_digit(served.predict(images)[1])
    out = {"all": {"n": len(sources), "rejected": float(rejected.mean())}}
    for source in sorted(set(sources)):
        mask = np.array([s == source for s in sources])
        out[source] = {"n": int(mask.sum()), "rejected": float(rejected[mask].mean())}
    return out


def rule_floor(rejection: dict) -> float:
    """The rule's floor: recorded, or for a model set by the validation rule alone its threshold (the same point)."""
    if "floor" in rejection:
        return float(rejection["floor"])
    return 0.0 if "rule" in rejection else float(rejection["threshold"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(config.DEFAULT_MODEL_DIR), help="model directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    served, torch_model = load_onnx_model(args.model), load_model(args.model)
    test = load_mnist("test")
    pen = load_drawings(config.DRAWINGS_FILE.get())
    others = load_drawings(NON_DIGITS) if Path(NON_DIGITS).is_file() else []
    pen_inputs, other_inputs = (
        render_drawings(d.strokes for d in pen)[0],
        render_drawings(d.strokes for d in others)[0],
    )
    held_out = negative_images(GENERATED, GENERATED_SEED, part="held_out")
    result = {
        "model": served.version,
        "temperature": torch_model.calibration["temperature"],
        "threshold": served.rejection_threshold,
        "mnist_test": digit_figures(served, torch_model, test.images.numpy(), test.labels.numpy()),
        "pen_digits": digit_figures(served, torch_model, pen_inputs, np.array([d.label for d in pen])),
        "non_digits_dev": rejected_per_source(served, other_inputs, [d.source for d in others]),
        "generated_validation_negatives": rejected_per_source(
            served, negative_images(GENERATED, GENERATED_SEED, part="validation"), ["generated"] * GENERATED
        )["all"],
        "generated_held_out_fonts": rejected_per_source(served, held_out, ["generated"] * GENERATED)["all"],
    }
    rejection = served.metadata.get("rejection") or {}
    if rejection:
        floor = rule_floor(rejection)
        non_digits = {
            "non_digits_dev": served.predict(other_inputs)[1],
            "generated_held_out_fonts": served.predict(held_out)[1],
        }
        judged = leave_one_site_out(served.predict(pen_inputs)[1], [d.source for d in pen], floor, non_digits)
        result["leave_one_site_out"] = {"rate": PEN_DIGIT_RATE, "floor": floor, **judged}
    print(f"model {result['model']}: temperature {result['temperature']:.3f}, threshold {result['threshold']}")
    print(f"{'set':<12} {'n':>6} {'accuracy':>9} {'ECE before':>11} {'ECE after':>10} {'not a digit':>12}")
    for name in ("mnist_test", "pen_digits"):
        r = result[name]
        ece_part = f"{r['ece_before']:>11.4f} {r['ece_after']:>10.4f}"
        print(f"{name:<12} {r['n']:>6} {r['accuracy']:>9.4f} {ece_part} {r['rejected']:>12.4f}")
    for source, r in result["non_digits_dev"].items():
        print(f"{'non-digits ' + source:<30} {r['n']:>6} answered not a digit {r['rejected']:.4f}")
    r = result["generated_validation_negatives"]
    print(f"{'generated (validation glyphs)':<30} {r['n']:>6} answered not a digit {r['rejected']:.4f}")
    r = result["generated_held_out_fonts"]
    print(f"{'generated (held-out fonts)':<30} {r['n']:>6} answered not a digit {r['rejected']:.4f}")
    if "leave_one_site_out" in result:
        judged = result["leave_one_site_out"]
        print(
            f"leave one site out (rule: at most {judged['rate']:.0%} of the other sites' pen digits, "
            f"floor {judged['floor']:.4f}):"
        )
        for site, fold in judged["sites"].items():
            shares = "  ".join(f"{k} {v:.4f}" for k, v in fold.items() if k not in ("n", "threshold"))
            print(f"  {site:<5} n {fold['n']:>5} threshold {fold['threshold']:.4f}  {shares}")
        print(
            "  mean/worst: "
            + "  ".join(
                f"{k} {judged[k]['mean']:.4f}/{judged[k]['worst']:.4f}"
                for k in ("digits", "non_digits_dev", "generated_held_out_fonts")
            )
        )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
