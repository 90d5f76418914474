"""Accuracy on digits people drew (pen-digits dev set), per site, through the dashboard's path.

Also scores the seed apps' preprocessing (whole canvas shrunk to 28x28) with the same model,
to show what the MNIST-style path is worth.

    .venv/bin/python benchmarks/drawn_digits.py [--model models/default] [--file drawings.jsonl]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from digitlib import config
from digitlib.dataset import Digits
from digitlib.drawings import evaluate_drawings, load_drawings
from digitlib.modeling.checkpoint import load_model
from digitlib.modeling.predict import evaluate
from digitlib.preprocess import resize_canvas_directly


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: models/default)")
    parser.add_argument("--file", default=config.DRAWINGS_FILE.get(), help="drawings (JSON lines)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    model = load_model(args.model)
    drawings = load_drawings(args.file)
    ours = evaluate_drawings(model, drawings)
    shrunk_images = np.stack([resize_canvas_directly(d.strokes) for d in drawings])
    shrunk = Digits(torch.from_numpy(shrunk_images), ours.digits.labels)
    baseline = evaluate(model, shrunk).accuracy

    summary = ours.summary()
    print(f"model {model.version}, {summary['n']} drawings from {args.file}")
    print(f"{'site':<8} {'n':>6} {'accuracy':>9}")
    for site, row in summary["per_source"].items():
        print(f"{site:<8} {row['n']:>6} {row['accuracy']:>9.4f}")
    print(f"{'all':<8} {summary['n']:>6} {summary['accuracy']:>9.4f}   (MNIST-style preprocessing)")
    print(f"{'all':<8} {summary['n']:>6} {baseline:>9.4f}   (canvas shrunk straight to 28x28, as the seed apps)")
    if args.json:
        print(json.dumps({**summary, "seed_preprocessing_accuracy": baseline, "model": model.version}))


if __name__ == "__main__":
    main()
