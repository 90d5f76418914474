"""The feedback loop under attack: poisoned labels, what the label checks find, what the gate lets through.

Visitors are simulated with the drawn digits of some sites (each drawing through the dashboard's
predict path, stored in a temporary SQLite store, as benchmarks/feedback_loop.py does), with a
share of their labels made wrong:

- random: a label flipped to another digit at random;
- targeted: every 7 labelled 1, then (past the sevens' share) other digits turned into their
  look-alike (4 -> 9, 3 -> 8, ...);
- garbage: non-digit drawings (../shared/data/non-digits) added, labelled as random digits, so
  that they make up `rate` of the feedback.

Each run is one digitlib.retrain, the candidate kept in memory (a temporary registry; models/ is
left as it is): the feedback is exported (label checks on: suspect rows left out of training; off:
all kept; the held-out split keeps them either way, see feedback_export), the flags are scored
against the injected rows (precision, recall), the base model is fine-tuned
on a few thousand MNIST images plus the feedback, and the promotion rule (registry.decide)
judges it on the feedback held-out split, MNIST test, MNIST validation and a pen-digit set of
drawings from the feedback sites by writers whose drawings were not used as feedback (`--gate-size`
of them). The sites not used for feedback are seen by neither the feedback nor the gate:
`*_unseen_accuracy` is measured on all their drawings. Every attack and rate runs with the same
settings and the same drawings on each side of the export's split (a drawing keeps its submission
id in every run); the defaults (750 feedback drawings repeated 10 times and 3,000 MNIST images, two
epochs as make retrain does; 2,000 MNIST test and validation images) keep the default 13 runs
under six minutes on two CPU cores (169 s on 2026-12-01).

    nice -n 19 .venv/bin/python benchmarks/poisoned_feedback.py [--json] [--attacks random,targeted,garbage]
        [--rates 0.1,0.3] [--per-site 250] [--mnist-subset 3000] [--no-unchecked]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from digitlib import config, feedback, retrain, simulate
from digitlib.drawings import Drawing, drawings_to_digits, load_drawings
from digitlib.modeling.checkpoint import load_model
from digitlib.store import FeedbackStore

LOOK_ALIKE = {0: 6, 1: 7, 2: 7, 3: 8, 4: 9, 5: 6, 6: 0, 7: 1, 8: 3, 9: 4}  # the targeted attack's mapping
NON_DIGITS = config.SHARED_DATA_DIR / "non-digits" / "dev.jsonl"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=str(config.DEFAULT_MODEL_DIR), help="model to start from")
    parser.add_argument("--file", default=config.DRAWINGS_FILE.get(), help="drawn digits (JSON lines)")
    parser.add_argument("--non-digits", default=str(NON_DIGITS), help="non-digit drawings (the garbage attack)")
    parser.add_argument("--feedback-sites", default="app,ced,gmd", help="sites whose drawings become feedback")
    parser.add_argument("--per-site", type=int, default=250, help="feedback drawings per site")
    parser.add_argument("--attacks", default="random,targeted,garbage")
    parser.add_argument(
        "--rates", default="0.1,0.3", help="shares of wrong labels (a clean run, 0, always comes first)"
    )
    parser.add_argument("--gate-size", type=int, default=800, help="pen digits the gate judges on (feedback sites)")
    parser.add_argument("--no-unchecked", action="store_true", help="skip the runs with the label checks off")
    parser.add_argument("--mnist-subset", type=int, default=3000, help="MNIST training images in each fine-tune")
    parser.add_argument("--mnist-test-size", type=int, default=2000)
    parser.add_argument("--mnist-validation-size", type=int, default=2000, help="of the 5,000 held out of training")
    # make retrain's oversample and epochs (RetrainSettings): a candidate that moves enough for poison to show
    parser.add_argument("--oversample", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return parser.parse_args(argv)


def poison(drawings: list[Drawing], attack: str, rate: float, garbage: list[Drawing], rng) -> tuple[list, np.ndarray]:
    """(the visitors' drawings with their answers, bool per drawing: its label was made wrong)."""
    labels = np.array([d.label for d in drawings])
    wrong = np.zeros(len(drawings), bool)
    if attack == "garbage":
        extra = min(len(garbage), round(rate / (1 - rate) * len(drawings))) if rate else 0
        chosen = [garbage[i] for i in rng.permutation(len(garbage))[:extra]]
        fake = [Drawing(g.strokes, int(rng.integers(10)), "garbage", g.writer) for g in chosen]
        return [*drawings, *fake], np.concatenate([wrong, np.ones(len(fake), bool)])
    n_wrong = round(rate * len(drawings))
    new = labels.copy()
    if attack == "random":
        rows = rng.permutation(len(drawings))[:n_wrong]
        new[rows] = (labels[rows] + rng.integers(1, 10, len(rows))) % 10
    elif attack == "targeted":
        sevens, others = np.flatnonzero(labels == 7), np.flatnonzero(labels != 7)
        rows = np.concatenate([rng.permutation(sevens), rng.permutation(others)])[: max(n_wrong, 0)]
        new[rows] = [LOOK_ALIKE[int(v)] for v in labels[rows]]
    else:
        raise ValueError(f"unknown attack {attack!r}")
    wrong[rows] = True
    return [Drawing(d.strokes, int(v), d.source, d.writer) for d, v in zip(drawings, new, strict=True)], wrong


def gate_drawings(drawings: list[Drawing], sites: set[str], visitors: list[Drawing], size: int) -> list[Drawing]:
    """Up to `size` drawings from the feedback sites by writers none of whose drawings are feedback, spread evenly."""
    visiting = {(d.source, d.writer) for d in visitors}
    pool = [d for d in drawings if d.source in sites and (d.source, d.writer) not in visiting]
    return pool[:: max(1, len(pool) // size)][:size] if size else []


def run_once(args, work: Path, base, visitors, wrong, checks: bool, data, current_accuracy, predict) -> dict:
    started = time.perf_counter()
    url = f"sqlite:///{work / 'feedback.db'}"
    store = FeedbackStore(url, queue_file=work / "queue.jsonl")
    # The same drawing keeps its submission id in every run: the same side of the export's fixed split, so
    # every attack and rate is trained and judged on the same drawings as the clean run (the garbage added after).
    fixed_ids = [f"drawing-{i:05d}" for i in range(len(visitors))]
    simulate.submit_drawings(store, base, visitors, predict=predict, submission_ids=fixed_ids)
    store.dispose()
    submitted = time.perf_counter()
    ids = feedback.load_feedback(url)["submission_id"].tolist()  # oldest first: the visitors' order
    injected = {ids[i] for i in np.flatnonzero(wrong)}
    settings = retrain.RetrainSettings(oversample=args.oversample, mnist_subset=args.mnist_subset, epochs=args.epochs,
                                       lr=args.lr, augment="none", check_labels=checks)  # fmt: skip
    run = retrain.retrain(url, work / "export", data, settings, models_dir=work / "models", register=False,
                          progress=False, current_accuracy=current_accuracy)  # fmt: skip
    flagged = {e["submission_id"] for e in run.manifest["label_checks"]["suspect"] or []}
    for path in (work / "feedback.db", work / "queue.jsonl"):
        path.unlink(missing_ok=True)
    hits, table, decision = len(flagged & injected), run.comparison.table, run.comparison.decision
    holdout = table.loc["feedback_holdout"]
    return {
        "checks": checks,
        "feedback": len(visitors),
        "injected": len(injected),
        "flagged": len(flagged) if checks else None,
        "flag_precision": hits / len(flagged) if checks and flagged and injected else None,
        "flag_recall": hits / len(injected) if checks and injected else None,
        "current_unseen_accuracy": float(table.loc["unseen", "current"]),
        "candidate_unseen_accuracy": float(table.loc["unseen", "candidate"]),
        "trusted_changes": {k: round(v, 4) for k, v in decision.trusted_changes.items()},
        "feedback_holdout": {
            "n": int(holdout["n"]),
            "current": round(float(holdout["current"]), 4),
            "candidate": round(float(holdout["candidate"]), 4),
        },
        "feedback_gain": round(decision.feedback_gain, 4),
        "promoted": decision.promote,
        "reason": decision.reason,
        "submit_seconds": round(submitted - started, 1),
        "train_seconds": round(run.training.train_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    # In memory where there is a tmpfs: the store commits every answer, and on disk those syncs took
    # longer than the rest of the export (about 4 s of each run's 750 answers; 0.5 s in /dev/shm).
    memory = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    work = Path(tempfile.mkdtemp(prefix="poisoned-feedback-", dir=memory))
    try:
        summary = run_all(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    clean_gain = summary["clean_gain"]
    print(f"{len(summary['runs'])} runs in {summary['seconds']:.0f} s; clean candidate's gain on unseen writers "
          f"{clean_gain:+.2%}")  # fmt: skip
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "runs"}))
        print(json.dumps({"runs": summary["runs"]}))
    return summary


def run_all(args, work: Path) -> dict:
    sites = set(args.feedback_sites.split(","))
    drawings = load_drawings(args.file)
    visitors = [d for s in sorted(sites) for d in [d for d in drawings if d.source == s][: args.per_site]]
    unseen = [d for d in drawings if d.source not in sites]
    garbage = load_drawings(args.non_digits)
    shutil.copytree(args.base, work / "models" / "default")
    base = load_model(work / "models" / "default")
    data = retrain.reference_data(
        mnist_test_size=args.mnist_test_size,
        mnist_validation_size=args.mnist_validation_size,
        drawings=drawings_to_digits(gate_drawings(drawings, sites, visitors, args.gate_size)),  # the gate's pen digits
        reported={"unseen": drawings_to_digits(unseen)},  # sites neither the feedback nor the gate saw
    )
    current_accuracy = retrain.compare_models({"current": base}, data.fixed_sets())["current"].to_dict()  # once
    predict = simulate.remembered_predictions(base)  # the same drawings come back in every run
    plan = [("random", 0.0)] + [(a, float(r)) for a in args.attacks.split(",") for r in args.rates.split(",")]
    runs = []
    for attack, rate in plan:
        for checks in (True,) if args.no_unchecked or rate == 0 else (True, False):
            answered, wrong = poison(visitors, attack, rate, garbage, np.random.default_rng(0))
            row = {
                "attack": attack,
                "rate": rate,
                **run_once(args, work, base, answered, wrong, checks, data, current_accuracy, predict),
            }
            runs.append(row)
            print(f"{attack:<9} {rate:4.0%} checks {'on ' if checks else 'off'} flagged {row['flagged']} "
                  f"(P {_pct(row['flag_precision'])}, R {_pct(row['flag_recall'])}) unseen "
                  f"{row['current_unseen_accuracy']:.2%} -> {row['candidate_unseen_accuracy']:.2%}: {row['reason']}",
                  flush=True)  # fmt: skip
    return {
        "base": base.version,
        "feedback_sites": sorted(sites),
        "unseen_writers": len(data.reported["unseen"]),
        "gate_pen_digits": len(data.drawings),
        "clean_gain": runs[0]["candidate_unseen_accuracy"] - runs[0]["current_unseen_accuracy"],
        "runs": runs,
    }


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"


if __name__ == "__main__":
    main()
