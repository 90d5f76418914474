"""What the feedback loop is worth: feedback from some sites of the drawn digits, accuracy on the others.

Visitors are simulated with the drawings of the feedback sites (each goes through the
dashboard's predict path and is stored with its true label in a temporary SQLite store); then
one digitlib.retrain in a temporary registry (models/ is left as it is, the candidate stays in
memory): the feedback is exported, the base model fine-tuned on MNIST plus the oversampled
feedback, and base and candidate compared on the MNIST test set, the feedback held-out split,
MNIST's validation split and the sites whose drawings were never seen (the gate's trusted
pen-digit set: the dev set less the feedback sites, also shown per site).

    .venv/bin/python benchmarks/feedback_loop.py [--base models/default] [--per-site 600] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from digitlib import config, retrain, simulate
from digitlib.drawings import drawings_to_digits, load_drawings
from digitlib.modeling.checkpoint import load_model
from digitlib.store import FeedbackStore


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=str(config.DEFAULT_MODEL_DIR), help="model to start from")
    parser.add_argument("--file", default=config.DRAWINGS_FILE.get(), help="drawings (JSON lines)")
    parser.add_argument("--feedback-sites", default="app,ced,gmd", help="sites whose drawings become feedback")
    parser.add_argument("--per-site", type=int, default=600, help="feedback drawings per site at most")
    parser.add_argument("--mnist-subset", type=int, default=20000)
    parser.add_argument("--oversample", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return parser.parse_args()


def fill_store(url: str, base, drawings, queue: Path) -> float:
    store = FeedbackStore(url, queue_file=queue)
    start = time.perf_counter()
    simulate.submit_drawings(store, base, drawings)
    store.dispose()
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    sites = set(args.feedback_sites.split(","))
    drawings = load_drawings(args.file)
    visitors = [d for s in sorted(sites) for d in [d for d in drawings if d.source == s][: args.per_site]]
    unseen = [d for d in drawings if d.source not in sites]
    work = Path(tempfile.mkdtemp(prefix="feedback-loop-"))
    models = work / "models"
    shutil.copytree(args.base, models / "default")
    base = load_model(models / "default")
    url = f"sqlite:///{work / 'feedback.db'}"

    fill_seconds = fill_store(url, base, visitors, work / "queue.jsonl")
    data = retrain.reference_data(
        drawings=drawings_to_digits(unseen),
        reported={f"unseen {site}": drawings_to_digits([d for d in unseen if d.source == site])
                  for site in sorted({d.source for d in unseen})},
    )  # fmt: skip
    settings = retrain.RetrainSettings(oversample=args.oversample, mnist_subset=args.mnist_subset, epochs=args.epochs,
                                       lr=args.lr)  # fmt: skip
    run = retrain.retrain(url, work / "export", data, settings, models_dir=models, register=False, progress=False)
    manifest, result, table, decision = run.manifest, run.training, run.comparison.table, run.comparison.decision
    table = table.rename(columns={"current": "before", "candidate": "after"}, index={"drawings": "unseen sites (all)"})

    print(f"base {base.version}; feedback: {len(visitors)} drawings from {sorted(sites)} "
          f"({manifest['counts']['train']['n']} train, {manifest['counts']['holdout']['n']} held out), "
          f"stored in {fill_seconds:.0f} s")  # fmt: skip
    print(
        f"fine-tuning: {run.mix_size:,} images x {args.epochs} epochs in {result.train_seconds:.0f} s ({result.device})"
    )
    print(f"{'set':<22} {'n':>6} {'before':>8} {'after':>8}")
    for name, row in table.iterrows():
        print(f"{name:<22} {int(row['n']):>6} {row['before']:>8.2%} {row['after']:>8.2%}")
    print(decision.reason)
    shutil.rmtree(work)
    if args.json:
        figures = {name: {"n": int(r["n"]), "before": r["before"], "after": r["after"]} for name, r in table.iterrows()}
        print(json.dumps({"base": base.version, "feedback_sites": sorted(sites), "sets": figures,
                          "train_seconds": result.train_seconds, "decision": decision.to_dict()}))  # fmt: skip


if __name__ == "__main__":
    main()
