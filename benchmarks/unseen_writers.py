"""Recipes judged on writers they never met: leave-one-site-out over the pen-digit dev set's sites.

Each candidate recipe trains on MNIST (+ generated drawings) only, never on a pen digit, and is
scored per site of the dev set through the dashboard's path. Then, for each site, the recipe
best on the OTHER sites is chosen and its accuracy on the held-out site reported: the rotated
selection says how well choosing a recipe this way does on writers the choice never saw.

Runs are kept in data/unseen-writers/ (figures and weights); `--reuse` re-prints from them and
trains only the missing ones. Saved model directories can join as candidates (`--model`).

    flock /work/locks/cpu .venv/bin/python benchmarks/unseen_writers.py --epochs 5 --json
    .venv/bin/python benchmarks/unseen_writers.py --reuse --model default=models/default --json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch

from digitlib import config
from digitlib.dataset import Digits, load_mnist, train_val_split
from digitlib.drawings import drawings_to_digits, load_drawings
from digitlib.experiments import leave_one_site_out
from digitlib.modeling.checkpoint import LoadedModel, load_model
from digitlib.modeling.predict import evaluate
from digitlib.modeling.train import recipe, train

# Candidate recipes: the default recipe with these changes (TrainConfig fields).
CANDIDATES = {
    "pen": {"redraw": 0.0, "stroke_digits": 0.0},  # the default recipe before issue #13
    "pen+redraw": {"redraw": 0.5, "stroke_digits": 0.0},
    "pen+strokes": {"redraw": 0.0, "stroke_digits": 0.2},
    "pen+redraw+strokes": {"redraw": 0.5, "stroke_digits": 0.2},
    "pen+redraw25+strokes": {"redraw": 0.25, "stroke_digits": 0.2},  # the default recipe since issue #13
    "draw+redraw+strokes": {"augment": "draw", "redraw": 0.5, "stroke_digits": 0.2},
}
RUNS_DIR = config.DATA_DIR / "unseen-writers"


def site_accuracies(model: LoadedModel, pen: Digits, sites: list[str]) -> dict[str, dict]:
    correct = evaluate(model, pen).correct
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for site, ok in zip(sites, correct.tolist(), strict=True):
        totals[site][0] += int(ok)
        totals[site][1] += 1
    return {site: {"accuracy": c / n, "correct": c, "n": n} for site, (c, n) in sorted(totals.items())}


def figures(model: LoadedModel, pen: Digits, sites: list[str], mnist_test: Digits) -> dict:
    per_site = site_accuracies(model, pen, sites)
    return {
        "per_site": per_site,
        "overall": sum(r["correct"] for r in per_site.values()) / sum(r["n"] for r in per_site.values()),
        "mnist_test": evaluate(model, mnist_test).accuracy,
    }


def train_candidate(name: str, epochs: int, seed: int, train_digits: Digits) -> tuple[LoadedModel, dict]:
    cfg = recipe("default", epochs=epochs, seed=seed, **CANDIDATES[name])
    started = time.perf_counter()
    result = train(cfg, train_digits)  # no validation set: screening runs are judged on the sites only
    info = {"config": cfg.to_dict(), "train_seconds": round(result.train_seconds, 1), "hardware": result.hardware}
    info["wall_seconds"] = round(time.perf_counter() - started, 1)
    return result.as_loaded(), info


def summarise(per_site: dict[str, dict]) -> tuple[float, float]:
    values = [r["accuracy"] for r in per_site.values()]
    return sum(values) / len(values), min(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs per candidate (screening: 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help=f"comma list from {list(CANDIDATES)}")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="a saved model as a candidate")
    parser.add_argument("--reuse", action="store_true", help="use saved runs in data/unseen-writers; train the rest")
    parser.add_argument("--file", default=config.DRAWINGS_FILE.get(), help="pen-digit drawings with a `source` site")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidate(s) {unknown}; choose from {list(CANDIDATES)}")
    saved_models = dict(item.split("=", 1) for item in args.model)

    drawings = [d for d in load_drawings(args.file) if d.label is not None]
    pen, sites = drawings_to_digits(drawings), [d.source for d in drawings]
    mnist_test = load_mnist("test")
    train_digits, _ = train_val_split(load_mnist("train"), 5000, seed=0)  # the default recipe's training images
    results: dict[str, dict] = {}
    for name in names:
        path = RUNS_DIR / f"{name}-{args.epochs}ep-seed{args.seed}.json"
        if args.reuse and path.is_file():
            results[name] = json.loads(path.read_text())
            continue
        torch.manual_seed(args.seed)
        model, info = train_candidate(name, args.epochs, args.seed, train_digits)
        results[name] = {**info, **figures(model, pen, sites, mnist_test)}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.model.state_dict(), path.with_suffix(".pt"))
        path.write_text(json.dumps(results[name], indent=2) + "\n")
    for name, directory in saved_models.items():
        model = load_model(directory)
        results[name] = {"model": model.version, **figures(model, pen, sites, mnist_test)}

    site_names = sorted({s for r in results.values() for s in r["per_site"]})
    rotated = leave_one_site_out({n: {s: r["per_site"][s]["accuracy"] for s in site_names} for n, r in results.items()})
    counts = {s: sum(1 for x in sites if x == s) for s in site_names}
    print(f"{len(pen)} pen digits from {args.file}; candidates trained {args.epochs} epochs on MNIST (+ generated)")
    header = (
        f"{'recipe':<22}" + "".join(f"{s:>8}" for s in site_names) + f"{'mean':>8}{'worst':>8}{'all':>8}{'MNIST':>8}"
    )
    print(header)
    print(f"{'(drawings)':<22}" + "".join(f"{counts[s]:>8}" for s in site_names))
    for name, r in results.items():
        mean, worst = summarise(r["per_site"])
        r["mean"], r["worst"] = mean, worst
        row = "".join(f"{r['per_site'][s]['accuracy']:>8.2%}" for s in site_names)
        print(f"{name:<22}{row}{mean:>8.2%}{worst:>8.2%}{r['overall']:>8.2%}{r['mnist_test']:>8.2%}")
    held = [rotated[s]["accuracy"] for s in site_names]
    rotated_mean, rotated_worst = sum(held) / len(held), min(held)
    print(
        f"{'rotated selection':<22}"
        + "".join(f"{a:>8.2%}" for a in held)
        + f"{rotated_mean:>8.2%}{rotated_worst:>8.2%}"
    )
    for s in site_names:
        print(f"  {s}: chosen on the other sites: {rotated[s]['recipe']}")
    if args.json:
        summary = {
            "epochs": args.epochs,
            "recipes": {
                n: {k: r[k] for k in ("per_site", "mean", "worst", "overall", "mnist_test")} for n, r in results.items()
            },
            "rotated": {"per_site": rotated, "mean": rotated_mean, "worst": rotated_worst},
        }
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
