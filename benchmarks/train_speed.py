"""Seed recipe vs the fast and default recipes, trained in the same run on this machine.

Prints accuracy, training time, images/s and time to 99.5% MNIST test accuracy for both,
and their ratio (same run, so the ratio holds on a noisy machine). The test set is scored
after each epoch outside the timed part; it never steers training.

    .venv/bin/python benchmarks/train_speed.py [--epochs-default N] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from digitlib.dataset import load_mnist, train_val_split
from digitlib.modeling.predict import evaluate
from digitlib.modeling.train import TrainResult, recipe, train

TARGET = 0.995


def run(name: str, cfg, train_digits, val_digits, test_digits) -> dict:
    curve = []  # (cumulative training seconds, test accuracy) after each epoch
    elapsed = 0.0

    def score_test(record, model):
        nonlocal elapsed
        elapsed += record["seconds"]
        probe = TrainResult(model, cfg, [], "", 0, 0).as_loaded()
        curve.append((elapsed, evaluate(probe, test_digits).accuracy))
        model.train()

    result = train(cfg, train_digits, val_digits, on_epoch=score_test, progress=False)
    reached = next((t for t, acc in curve if acc >= TARGET), None)
    return {
        "name": name,
        "arch": cfg.arch,
        "epochs": len(result.history),
        "test_accuracy": curve[-1][1],
        "train_seconds": round(result.train_seconds, 1),
        "images_per_second": round(result.images_per_second, 1),
        "seconds_to_99.5": None if reached is None else round(reached, 1),
        "curve": [(round(t, 1), round(a, 4)) for t, a in curve],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs-default", type=int, help="override the default recipe's epochs")
    parser.add_argument("--epochs-seed", type=int, help="override the seed recipe's epochs")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    full = load_mnist("train")
    train_digits, val_digits = train_val_split(full)
    test_digits = load_mnist("test")
    runs = []
    for name in ("seed", "fast", "default"):
        epochs = getattr(args, f"epochs_{name}", None)
        cfg = recipe(name, threads=args.threads, **({"epochs": epochs} if epochs else {}))
        print(f"training the {name} recipe ({cfg.arch}, {cfg.epochs} epochs)...", flush=True)
        runs.append(run(name, cfg, train_digits, val_digits, test_digits))
    seed, _, default = runs
    report = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "runs": runs,
        "speed_ratio_images_per_second": round(default["images_per_second"] / seed["images_per_second"], 2),
    }
    print(f"\n{'recipe':<8} {'arch':<6} {'epochs':>6} {'test acc':>9} {'train s':>8} {'img/s':>8} {'s to 99.5%':>11}")
    for r in runs:
        to_target = "not reached" if r["seconds_to_99.5"] is None else f"{r['seconds_to_99.5']:.1f}"
        print(
            f"{r['name']:<8} {r['arch']:<6} {r['epochs']:>6} {r['test_accuracy']:>9.4f} {r['train_seconds']:>8.1f}"
            f" {r['images_per_second']:>8.0f} {to_target:>11}"
        )
    print(f"default/seed images per second: {report['speed_ratio_images_per_second']:.2f}x  ({report['machine']})")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
