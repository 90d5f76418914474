"""Command line: `digitlib train`, `ensemble`, `evaluate`, `eval-drawings` (also `python -m digitlib`).

Thin: parses arguments, calls library code, prints results. With --json the last line of
standard output is one JSON object (a contract used by outside checks).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from dataclasses import fields
from pathlib import Path

from digitlib import config

log = logging.getLogger("digitlib")


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    from digitlib.modeling.train import RECIPES, TrainConfig

    parser.add_argument(
        "--recipe", default="default", choices=list(RECIPES), help="named recipe to start from (sprint, fast-gpu: GPUs)"
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        kind = hints[f.name]
        convert = next((t for t in (int, float, str) if t in typing.get_args(kind) or kind is t), str)
        # None means "as the recipe says": only options given on the command line override it.
        if kind is bool:
            parser.add_argument(f"--{f.name}", action="store_true", default=None, help=f.metadata["help"])
            continue
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=convert,
            default=None,
            help=f"{f.metadata['help']} (default recipe: {f.default})",
        )


def _init_distributed() -> int:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); returns this rank."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend)
    return dist.get_rank() if dist.is_initialized() else 0


def _model_dir(args: argparse.Namespace) -> Path:
    """--model when given, else the registry's choice (DIGITLIB_MODEL, else the current version)."""
    from digitlib.registry import resolve_model_dir

    return Path(args.model) if args.model else resolve_model_dir()


def cmd_train(args: argparse.Namespace) -> dict:
    from digitlib.dataset import load_mnist, train_val_split
    from digitlib.modeling.train import TrainConfig, recipe, train

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    cfg = recipe(args.recipe, **given)
    rank = _init_distributed()
    full = load_mnist("train", args.mnist_dir)
    train_digits, val_digits = train_val_split(full, cfg.val_size, seed=0)
    n_train = len(train_digits.head(cfg.train_subset))
    log.info("training %s on %d images (validation %d)", cfg.arch, n_train, len(val_digits))
    result = train(cfg, train_digits, val_digits)
    if rank != 0:  # under torchrun, the first process evaluates and saves
        return {}
    from digitlib.runs import record_training_run

    test = None if args.no_test else load_mnist("test", args.mnist_dir)
    out = Path(args.out) if args.out else config.MODELS_DIR / args.name
    command = " ".join(["digitlib", *sys.argv[1:]])
    metrics = record_training_run(result, out, full, test, command=command, recipe=args.recipe)
    keep = ("epochs", "val_accuracy", "test_accuracy", "train_seconds", "images_per_second", "device", "precision")
    return {"model": str(out), **{k: metrics.get(k) for k in keep}}


def cmd_ensemble(args: argparse.Namespace) -> dict:
    from digitlib.dataset import load_mnist, train_val_split
    from digitlib.modeling.checkpoint import load_model
    from digitlib.modeling.train import TrainResult, ensemble_result
    from digitlib.runs import record_training_run

    members = [TrainResult.from_saved(load_model(d)) for d in args.members]
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two model directories")
    if members[0].config.val_size < 1:  # nothing to calibrate on (ensemble_result checks the other members)
        raise ValueError("members must hold out the same validation images (val_size) to be calibrated together")
    full = load_mnist("train", args.mnist_dir)
    _, val_digits = train_val_split(full, members[0].config.val_size, seed=0)
    result = ensemble_result(members, members[0].config, val_digits)
    test = None if args.no_test else load_mnist("test", args.mnist_dir)
    out = Path(args.out) if args.out else config.MODELS_DIR / args.name
    command = " ".join(["digitlib", *sys.argv[1:]])
    metrics = record_training_run(result, out, full, test, command=command)
    keep = ("val_accuracy", "test_accuracy", "train_seconds")
    return {"model": str(out), "members": len(members), **{k: metrics.get(k) for k in keep}}


def cmd_evaluate(args: argparse.Namespace) -> dict:
    from digitlib.dataset import load_mnist
    from digitlib.modeling.checkpoint import load_model
    from digitlib.modeling.predict import evaluate

    model = load_model(_model_dir(args))
    digits = load_mnist(args.split, args.mnist_dir)
    summary = evaluate(model, digits).summary()
    keep = ("accuracy", "n", "errors", "per_class_accuracy", "mean_confidence", "nll", "ece")
    return {"model": str(model.path), "version": model.version, "split": args.split, **{k: summary[k] for k in keep}}


def cmd_eval_drawings(args: argparse.Namespace) -> dict:
    from digitlib.drawings import evaluate_drawings_file
    from digitlib.modeling.checkpoint import load_model

    model = load_model(_model_dir(args))
    result = evaluate_drawings_file(model, args.file).summary()  # streamed: any file size
    return {"model": str(model.path), "version": model.version, "file": str(args.file), **result}


def cmd_export_onnx(args: argparse.Namespace) -> dict:
    from digitlib.modeling.export import export_onnx

    directory = _model_dir(args)
    entry = export_onnx(directory, check_limit=args.check_limit)
    checked = {name: figures["n"] for name, figures in entry["checked"].items()}
    return {"model": str(directory), "onnx": str(directory / entry["file"]), "sha256": entry["sha256"],
            "opset": entry["opset"], "onnxruntime": entry["onnxruntime_version"], "checked": checked}  # fmt: skip


def cmd_sweep(args: argparse.Namespace) -> dict:
    from digitlib.experiments import load_sweep, run_sweep

    sweep = load_sweep(args.file)
    log.info("sweep %s: %d runs of %s", sweep.name, len(sweep.runs), sweep.notebook.name)
    result = run_sweep(sweep, args.reports_dir, args.models_dir, args.timeout)
    return {
        "sweep": sweep.name,
        "runs": len(result.table),
        "failed": result.failed,
        "table": str(result.csv),
        "plot": str(result.plot),
    }


def cmd_run_notebook(args: argparse.Namespace) -> dict:
    from digitlib.experiments import parse_value, project_path, run_notebook

    parameters = {name: parse_value(value) for name, value in args.parameters}
    run = run_notebook(project_path(args.notebook), project_path(args.output), parameters, html=not args.no_html,
                       timeout=args.timeout)  # fmt: skip
    result = {"notebook": str(run.notebook), "html": str(run.html) if run.html else None, "status": run.status}
    return {**result, "seconds": round(run.seconds, 1), **({"error": run.error} if run.error else {})}


def cmd_export_feedback(args: argparse.Namespace) -> dict:
    from digitlib.feedback_export import export_training_set

    manifest = export_training_set(
        args.out, args.database_url, args.holdout_fraction, keep_suspect=args.keep_suspect, models_dir=args.models_dir
    )
    return {
        "out": str(args.out),
        "source_db": manifest["source_db"],
        "first": manifest["time_range"]["first"],
        "last": manifest["time_range"]["last"],
        "rows_in_db": manifest["rows_in_db"],
        "exported": manifest["exported"],
        "train": manifest["counts"]["train"]["n"],
        "holdout": manifest["counts"]["holdout"]["n"],
        "dropped": manifest["dropped"],
        "suspect": manifest["label_checks"]["n_suspect"],
        "per_label": {k: v + manifest["counts"]["holdout"]["per_label"][k]
                      for k, v in manifest["counts"]["train"]["per_label"].items()},
    }  # fmt: skip


def _pointer_result(pointer, models_dir) -> dict:
    from digitlib.registry import version_record

    record = version_record(pointer.current, models_dir)
    return {"current": pointer.current, "version": record.get("version"), "history": " -> ".join(pointer.history)}


def cmd_promote(args: argparse.Namespace) -> dict:
    from digitlib.registry import promote

    return _pointer_result(promote(args.name, args.models_dir, force=args.force), args.models_dir)


def cmd_rollback(args: argparse.Namespace) -> dict:
    from digitlib.registry import rollback

    return _pointer_result(rollback(args.models_dir), args.models_dir)


def cmd_models(args: argparse.Namespace) -> dict:
    from digitlib.registry import list_versions

    result = {}
    for row in list_versions(args.models_dir):
        figures = ", ".join(f"{k} {v:.4f}" for k, v in row["metrics"].items() if isinstance(v, float))
        mark = "* " if row["current"] else ""
        result[row["name"]] = f"{mark}{row['version']} (parent {row['parent']}){': ' + figures if figures else ''}"
    return result or {"models": f"no model directories in {args.models_dir or config.MODELS_DIR}"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digitlib", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    # Unset, the registry decides (registry.resolve_model_dir), as the dashboard does.
    model_help = f"model directory (default: {config.MODEL_DIR.name} setting, else the registry's current version)"

    train = sub.add_parser("train", help="train a model and write a model directory")
    train.add_argument("--name", default="run", help="model directory name under models/ (default: run)")
    train.add_argument("--out", help="model directory (overrides --name)")
    train.add_argument("--mnist-dir", help="folder with the MNIST files (default: MNIST_DIR, data/mnist)")
    train.add_argument("--no-test", action="store_true", help="skip the final test-set evaluation")
    train.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    _add_train_options(train)
    train.set_defaults(func=cmd_train)

    en = sub.add_parser(
        "ensemble", help="join trained model directories (one recipe, other seeds) into one model, calibrated anew"
    )
    en.add_argument("members", nargs="+", help="model directories trained with the same validation split")
    en.add_argument("--name", default="ensemble", help="model directory name under models/ (default: ensemble)")
    en.add_argument("--out", help="model directory (overrides --name)")
    en.add_argument("--mnist-dir", help="folder with the MNIST files (default: MNIST_DIR, data/mnist)")
    en.add_argument("--no-test", action="store_true", help="skip the test-set evaluation")
    en.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    en.set_defaults(func=cmd_ensemble)

    ev = sub.add_parser("evaluate", help="evaluate a model on MNIST")
    ev.add_argument("--model", help=model_help)
    ev.add_argument("--split", default="test", choices=["test", "train"])
    ev.add_argument("--mnist-dir", help="folder with the MNIST files")
    ev.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ev.set_defaults(func=cmd_evaluate)

    dr = sub.add_parser(
        "eval-drawings",
        help="evaluate a model on recorded drawings through the dashboard's path (a file without drawings is an error)",
    )
    dr.add_argument("file", nargs="?", default=config.DRAWINGS_FILE.get(), help="JSON-lines drawings file")
    dr.add_argument("--model", help=model_help)
    dr.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    dr.set_defaults(func=cmd_eval_drawings)

    ox = sub.add_parser("export-onnx", help="write or refresh a model directory's model.onnx (checked against torch)")
    ox.add_argument("--model", help=model_help)
    ox.add_argument("--check-limit", type=int, help="check on the first N images of each set (default: all)")
    ox.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ox.set_defaults(func=cmd_export_onnx)

    sw = sub.add_parser("sweep", help="run a YAML grid of parameter sets through a notebook (papermill)")
    sw.add_argument("file", help="sweep file, e.g. experiments/lr-arch.yaml")
    sw.add_argument("--reports-dir", help="executed notebooks, experiments.csv and figures (default: reports/)")
    sw.add_argument("--models-dir", help="model directories (default: models/)")
    sw.add_argument("--timeout", type=int, help="seconds allowed per notebook cell (default: no limit)")
    sw.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    sw.set_defaults(func=cmd_sweep)
    _add_feedback_loop_commands(sub)
    _add_notebook_command(sub)
    return parser


def _add_notebook_command(sub) -> None:
    nb = sub.add_parser(
        "run-notebook", help="run a notebook by papermill into a report (+ HTML); unknown parameter names are refused"
    )
    nb.add_argument("notebook", help="e.g. notebooks/1.0-dl-train-cnn.ipynb")
    nb.add_argument("output", help="executed notebook, e.g. reports/myrun-train.ipynb (the HTML goes beside it)")
    nb.add_argument("-p", "--parameter", nargs=2, action="append", default=[], dest="parameters",
                    metavar=("NAME", "VALUE"), help="a parameter, read as papermill's -p does")  # fmt: skip
    nb.add_argument("--no-html", action="store_true", help="skip the HTML export")
    nb.add_argument("--timeout", type=int, help="seconds allowed per cell (default: no limit)")
    nb.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    nb.set_defaults(func=cmd_run_notebook)


def _add_feedback_loop_commands(sub) -> None:
    ex = sub.add_parser("export-feedback", help="write a training set from the logged feedback (with a manifest)")
    ex.add_argument("out", help="folder for train.npz, holdout.npz and manifest.json")
    ex.add_argument("--database-url", help="feedback store (default: DATABASE_URL setting)")
    ex.add_argument("--holdout-fraction", type=float, default=0.2, help="share held out, fixed by submission id")
    ex.add_argument("--keep-suspect", action="store_true", help="keep rows the label checks suspect (still listed)")
    ex.add_argument("--models-dir", help="registry whose models judge the labels (default: models/)")
    ex.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ex.set_defaults(func=cmd_export_feedback)

    models_dir = {"help": "model registry folder (default: models/)"}
    pr = sub.add_parser("promote", help="make a registered model version the current one")
    pr.add_argument("name", help="version directory under models/")
    pr.add_argument("--force", action="store_true", help="promote without a passing comparison with the current one")
    pr.add_argument("--models-dir", **models_dir)
    pr.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    pr.set_defaults(func=cmd_promote)

    rb = sub.add_parser("rollback", help="go back to the model version promoted before the current one")
    rb.add_argument("--models-dir", **models_dir)
    rb.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    rb.set_defaults(func=cmd_rollback)

    ls = sub.add_parser("models", help="list the model versions (* marks the current one)")
    ls.add_argument("--models-dir", **models_dir)
    ls.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ls.set_defaults(func=cmd_models)


def _print_human(result: dict) -> None:
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, dict):
            value = ", ".join(
                f"{k} {v['accuracy']:.4f} (n={v['n']})" if isinstance(v, dict) else f"{k} {v}" for k, v in value.items()
            )
        elif isinstance(value, list):
            value = " ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in value)
        print(f"{key:>20}: {value}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from digitlib.dataset import DataError
    from digitlib.modeling.checkpoint import CheckpointError

    try:
        result = args.func(args)
        # Strict JSON: a NaN or an infinity is an error, never a figure printed as NaN.
        text = json.dumps(result, allow_nan=False) if result and getattr(args, "json", False) else None
    except (DataError, CheckpointError, ValueError, OSError) as e:
        # One line on stderr, nothing on stdout: scripts read stdout as JSON.
        print(f"digitlib {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if not result:  # a non-zero rank of a distributed run: nothing to report
        return 0
    if text is not None:
        print(text)
    else:
        _print_human(result)
    return 1 if result.get("status") == "failed" else 0  # a failed notebook run stops `make`
