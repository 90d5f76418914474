"""Training recipes side by side in one run: time to 99% and 99.5% MNIST test accuracy.

Prints, per recipe: final test accuracy, training time, median epoch time, images/s and the
training time until the test set first scored 99% and 99.5%. The seed recipe runs in the same
process, so the default/seed images-per-second ratio holds on a noisy machine. The test set is
scored after each epoch outside the timed part; it never steers training.

On a GPU each recipe runs after an untimed warm-up (CUDA start-up and cuDNN's
kernel search would otherwise land in the first timed epoch), and every recipe runs
`--repeats` times (medians reported): sub-second runs are noisy.

    .venv/bin/python benchmarks/train_speed.py [--recipes seed fast ...] [--repeats N] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import torch

from digitlib.dataset import Digits, load_mnist, train_val_split
from digitlib.modeling.predict import evaluate
from digitlib.modeling.train import RECIPES, TrainConfig, TrainResult, hardware_name, pick_device, recipe, train

IN_ORDER = ("seed", "sprint", "fast-gpu", "fast", "default")  # every recipe, the seed baseline first


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    """Training seconds until the test accuracy first reached `target` (None if never)."""
    return next((seconds for seconds, accuracy in curve if accuracy >= target), None)


def median_or_none(values: list[float | None]) -> float | None:
    """Median over repeats, a run that never got there counting as slowest (None if that is the median)."""
    middle = statistics.median_low([float("inf") if v is None else v for v in values])
    return None if middle == float("inf") else middle


def run_once(cfg: TrainConfig, train_digits: Digits, val_digits: Digits, test_digits: Digits) -> dict:
    curve = []  # (cumulative training seconds, test accuracy) after each epoch
    elapsed = 0.0

    def score_test(record, model):
        nonlocal elapsed
        elapsed += record["seconds"]
        probe = TrainResult(model, cfg, [], "", 0, 0).as_loaded()
        curve.append((elapsed, evaluate(probe, test_digits).accuracy))
        model.train()

    result = train(cfg, train_digits, val_digits, on_epoch=score_test, progress=False)
    return {
        "test_accuracy": curve[-1][1],
        "train_seconds": result.train_seconds,
        "epoch_seconds": statistics.median(r["seconds"] for r in result.history),
        "images_per_second": result.images_per_second,
        "precision": result.precision,
        "curve": curve,
        "seconds_to_99": time_to(curve, 0.99),
        "seconds_to_99.5": time_to(curve, 0.995),
    }


def warm_up(cfg: TrainConfig, train_digits: Digits) -> None:
    """A few untimed steps with the same batch shapes, the last partial batch included."""
    images = 4 * cfg.batch_size + len(train_digits) % cfg.batch_size
    train(replace(cfg, epochs=1, train_subset=images), train_digits, progress=False)


def summarise(name: str, cfg: TrainConfig, runs: list[dict]) -> dict:
    def med(key):
        return statistics.median(r[key] for r in runs)

    summary = {
        "name": name,
        "arch": cfg.arch,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "precision": runs[0]["precision"],
        "repeats": len(runs),
        "test_accuracy": round(med("test_accuracy"), 4),
        "train_seconds": round(med("train_seconds"), 3),
        "epoch_seconds": round(med("epoch_seconds"), 3),
        "images_per_second": round(med("images_per_second"), 1),
        "curve": [(round(t, 3), round(a, 4)) for t, a in runs[0]["curve"]],
    }
    for key in ("seconds_to_99", "seconds_to_99.5"):
        value = median_or_none([r[key] for r in runs])
        summary[key] = None if value is None else round(value, 3)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), help=f"default: {' '.join(IN_ORDER)}")
    parser.add_argument("--repeats", type=int, help="runs per recipe, medians reported (default: 1 on CPU, 3 on GPU)")
    parser.add_argument("--epochs-default", type=int, help="override the default recipe's epochs")
    parser.add_argument("--epochs-seed", type=int, help="override the seed recipe's epochs")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    parser.add_argument(
        "--train-subset", type=int, help="train on the first N images only (a quick check of this script)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (compile time is timed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    device = pick_device()
    gpu = device.type == "cuda"
    names = args.recipes or IN_ORDER
    repeats = args.repeats or (3 if gpu else 1)
    full = load_mnist("train")
    train_digits, val_digits = train_val_split(full)
    test_digits = load_mnist("test")
    runs = []
    for name in names:
        epochs = {"default": args.epochs_default, "seed": args.epochs_seed}.get(name)
        options = {"threads": args.threads, "compile": args.compile, "train_subset": args.train_subset}
        cfg = recipe(name, **options, **({"epochs": epochs} if epochs else {}))
        print(
            f"training the {name} recipe ({cfg.arch}, {cfg.epochs} epochs, batch {cfg.batch_size}) on {device}",
            flush=True,
        )
        if gpu:
            warm_up(cfg, train_digits)
        done = [
            run_once(replace(cfg, seed=cfg.seed + i), train_digits, val_digits, test_digits) for i in range(repeats)
        ]
        runs.append(summarise(name, cfg, done))
    by_name = {r["name"]: r for r in runs}
    report = {
        "machine": f"{hardware_name(device)}, torch {torch.__version__}",
        "device": str(device),
        "date": time.strftime("%Y-%m-%d"),
        "runs": runs,
    }
    if "default" in by_name and "seed" in by_name:
        ratio = by_name["default"]["images_per_second"] / by_name["seed"]["images_per_second"]
        report["speed_ratio_images_per_second"] = round(ratio, 2)

    print(
        f"\n{'recipe':<9} {'epochs':>6} {'batch':>5} {'test acc':>8} {'train s':>8} {'epoch s':>8} {'img/s':>8}"
        f" {'s to 99%':>9} {'s to 99.5%':>10}"
    )
    for r in runs:
        reach = ["-" if r[k] is None else f"{r[k]:.2f}" for k in ("seconds_to_99", "seconds_to_99.5")]
        print(
            f"{r['name']:<9} {r['epochs']:>6} {r['batch_size']:>5} {r['test_accuracy']:>8.4f}"
            f" {r['train_seconds']:>8.2f} {r['epoch_seconds']:>8.3f} {r['images_per_second']:>8.0f}"
            f" {reach[0]:>9} {reach[1]:>10}"
        )
    if "speed_ratio_images_per_second" in report:
        print(f"default/seed images per second: {report['speed_ratio_images_per_second']:.2f}x")
    print(f"({report['machine']}, {repeats} run(s) per recipe, medians)")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
