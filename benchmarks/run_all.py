"""Run every benchmark and write reports/benchmarks.md (figure, value, machine, date, command).

Each benchmark is its own script with --json; this runs them one after another (they would
disturb each other's timings in parallel) and gathers their figures in one table.

    .venv/bin/python benchmarks/run_all.py [--only train_speed drawn_digits ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from digitlib import config

HERE = Path(__file__).resolve().parent

BENCHMARKS = {
    "train_speed": ["--json"],
    "train_step_options": ["--json"],
    "drawn_digits": ["--json"],
    "dashboard_latency": ["--json"],
    "feedback_writes": ["--json"],
    "crowd": ["--json"],
}


def figures_of(name: str, result: dict) -> list[tuple[str, object]]:
    """The figures a person looks for, out of one benchmark's JSON."""
    if name == "train_speed":
        rows = []
        for run in result["runs"]:
            epochs = f"{run['epochs']} epoch" + ("s" if run["epochs"] > 1 else "")
            label = f"{run['name']} recipe ({run['arch']}, {epochs}, batch {run['batch_size']}, {run['precision']})"
            rows += [
                (f"{label}: MNIST test accuracy", f"{run['test_accuracy']:.4f}"),
                (f"{label}: training time", _seconds(run["train_seconds"])),
                (f"{label}: time to 99% test accuracy", _seconds(run["seconds_to_99"])),
                (f"{label}: time to 99.5% test accuracy", _seconds(run["seconds_to_99.5"])),
                (f"{label}: epoch time", _seconds(run["epoch_seconds"])),
                (f"{label}: images/s", f"{run['images_per_second']:.0f}"),
            ]
        if "speed_ratio_images_per_second" in result:
            rows.append(("default/seed training images/s ratio (same run)", result["speed_ratio_images_per_second"]))
        return rows
    if name == "train_step_options":
        return [
            (
                f"vggbn training step, batch {result['batch_size']}, {r['memory_format']}, {r['threads']} thread(s),"
                f" {r['precision']}: images/s",
                r["images_per_second"],
            )
            for r in result["rows"]
        ]
    if name == "drawn_digits":
        rows = [("pen digits accuracy, default model", f"{result['accuracy']:.4f} (n={result['n']})")]
        rows += [
            (f"pen digits accuracy, site {s}", f"{r['accuracy']:.4f} (n={r['n']})")
            for s, r in result["per_source"].items()
        ]
        return rows + [
            ("pen digits accuracy, canvas shrunk to 28x28 (seed apps)", f"{result['seed_preprocessing_accuracy']:.4f}")
        ]
    if name == "dashboard_latency":
        py, web = result["python"], result.get("browser", {})
        rows = [
            ("strokes to probabilities p50 (1 thread)", f"{py['p50_ms']:.2f} ms"),
            ("strokes to probabilities p99 (1 thread)", f"{py['p99_ms']:.2f} ms"),
        ]
        if web:
            rows += [
                ("mouse-up to prediction shown in Chromium (median)", f"{web['mouseup_to_prediction_median_ms']} ms"),
                ("mouse-up to prediction shown in Chromium (max)", f"{web['mouseup_to_prediction_max_ms']} ms"),
                ("page open to interactive canvas (median)", f"{web['page_open_to_canvas_median_s']} s"),
                ("memory per dashboard session (kernel RSS)", f"{web['kernel_rss_per_session_mib']} MiB"),
            ]
        return rows
    if name == "feedback_writes":
        return [
            ("feedback rows written per second, PostgreSQL", result["postgres_rows_per_second"]),
            ("feedback rows written per second, SQLite", result["sqlite_rows_per_second"]),
        ]
    if name == "crowd":
        return crowd_figures(result)
    return [(k, v) for k, v in result.items() if not isinstance(v, dict | list)]


def crowd_figures(result: dict) -> list[tuple[str, object]]:
    """One crowd run (protocol-level visitors, or Chromium from load_dashboard.py) as report rows."""
    who = "simulated" if result["client"] == "protocol" else "Chromium"
    think = "-".join(f"{t:g}" for t in result["think_s"])
    label = (
        f"{result['visitors']} {who} visitors, {result['rate_per_s']:g}/s,"
        f" {result['drawings_per_visitor']} digits each, {think} s think"
    )
    page, stroke = result["page_open_s"], result["stroke_to_prediction_ms"]
    rows = [
        (f"{label}: served", f"{result['served']}/{result['visitors']}"),
        (f"{label}: page open p50 / p95 / max", f"{page['p50']} / {page['p95']} / {page['max']} s"),
        (
            f"{label}: stroke end to prediction p50 / p95 / p99 / max",
            f"{stroke['p50']} / {stroke['p95']} / {stroke['p99']} / {stroke['max']} ms",
        ),
    ]
    if "rows_stored" in result:
        once = "each once" if result["answers_stored_exactly_once"] else "NOT each once"
        rows.append(
            (f"{label}: answers saved / rows stored", f"{result['answers_saved']} / {result['rows_stored']}, {once}")
        )
    if "peak_rss_total_mib" in result:
        rows += [
            (
                f"{label}: server + kernels peak RSS",
                f"{result['peak_rss_total_mib']} MiB ({result['kernels_at_peak']} kernels)",
            ),
            (
                f"{label}: kernel RSS mean / max",
                f"{result['kernel_rss_mib_mean']} / {result['kernel_rss_mib_max']} MiB",
            ),
            (f"{label}: server tree CPU (user+sys)", f"{result['server_cpu_s']} s over {result['wall_s']} s"),
            ("dashboard kernel start CPU (preheated, notebook run)", f"{result['kernel_start_cpu_s']} s"),
        ]
    return rows


def _seconds(value) -> str:
    if value is None:
        return "not reached"
    return f"{value:.2f} s" if value < 10 else f"{value:.0f} s"  # GPU runs take under a second


def run_benchmark(name: str) -> tuple[dict, str]:
    command = [sys.executable, str(HERE / f"{name}.py"), *BENCHMARKS[name]]
    print(f"== {name}", flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=config.PROJ_ROOT)
    print(done.stdout, flush=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed (exit {done.returncode})")
    shown = shlex.join([".venv/bin/python", f"benchmarks/{name}.py", *BENCHMARKS[name]])
    return json.loads(done.stdout.strip().splitlines()[-1]), shown


def markdown(rows: list[tuple[str, object, str]], machine: str, date: str) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Made by `.venv/bin/python benchmarks/run_all.py` on {date}. Machine: {machine}.",
        "",
        "| figure | value | machine | date | command |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {figure} | {value} | {machine} | {date} | `{command}` |" for figure, value, command in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument("--out", default=str(config.REPORTS_DIR / "benchmarks.md"))
    args = parser.parse_args()

    machine = machine_name()
    date = time.strftime("%Y-%m-%d")
    rows = []
    for name in args.only or BENCHMARKS:
        result, command = run_benchmark(name)
        rows += [(figure, value, command) for figure, value in figures_of(name, result)]
    Path(args.out).write_text(markdown(rows, machine, date))
    print(f"wrote {args.out}")


def machine_name() -> str:
    import torch

    from digitlib.modeling.train import hardware_name

    gpu = hardware_name(torch.device("cuda")) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {hardware_name(torch.device('cpu'))}, {gpu}"


if __name__ == "__main__":
    main()
