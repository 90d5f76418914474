"""Run the benchmarks and write reports/benchmarks.md: one table per benchmark, the machine named once.

Each benchmark is its own script with --json; this runs them one after another (they would
disturb each other's timings in parallel) and turns each one's JSON into a readable table under
its own heading, with the command, date and load average above it. Sections of benchmarks not
run this time are kept as they were, and so is any other section of the file: rerunning one
benchmark replaces only its table. What each benchmark means, and the hand-written readings of
its figures, are in docs/benchmarks.md.

    .venv/bin/python benchmarks/run_all.py [--only drawn_digits honest_answers ...] [--skip-long] [--out FILE]
    .venv/bin/python benchmarks/run_all.py --list
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from digitlib import config

HERE = Path(__file__).resolve().parent
TITLE = "# Benchmarks"


@dataclass(frozen=True)
class Benchmark:
    script: str
    args: tuple[str, ...] = ("--json",)
    long: bool = False  # trains models or runs for many minutes: --skip-long leaves it out


# In the order they run. The crowd runs are small here (the 50-visitor runs are made by hand:
# docs/benchmarks.md); training benchmarks are long.
BENCHMARKS = {
    "train_speed": Benchmark("train_speed.py", long=True),
    "train_step_options": Benchmark("train_step_options.py"),
    "drawn_digits": Benchmark("drawn_digits.py"),
    "unseen_writers": Benchmark("unseen_writers.py", ("--epochs", "5", "--json"), long=True),
    "honest_answers": Benchmark("honest_answers.py"),
    "dashboard_latency": Benchmark("dashboard_latency.py"),
    "voila_attack": Benchmark("voila_attack.py", ()),  # prints its JSON line without --json
    "crowd": Benchmark("crowd.py", ("--visitors", "10", "--json")),
    "replicas": Benchmark("replicas.py", ("--visitors", "10", "--drawings", "2", "--json")),
    "feedback_writes": Benchmark("feedback_writes.py"),
    "cli_memory": Benchmark("cli_memory.py"),
    "feedback_loop": Benchmark("feedback_loop.py", long=True),
    "poisoned_feedback": Benchmark("poisoned_feedback.py", long=True),
}


@dataclass
class Table:
    columns: list[str]
    rows: list[list[object]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [_row(self.columns), _row(["---"] * len(self.columns))]
        lines += [_row(row) for row in self.rows]
        return "\n".join(lines + ([""] + self.notes if self.notes else []))


def _row(cells) -> str:
    return "| " + " | ".join("" if c is None else str(c).replace("|", "\\|") for c in cells) + " |"


def _pct(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}%}"


def _seconds(value) -> str:
    if value is None:
        return "not reached"
    return f"{value:.2f} s" if value < 10 else f"{value:.0f} s"  # GPU runs take under a second


def _spread(stats: dict, keys, unit: str) -> str:
    return " / ".join("-" if stats.get(k) is None else f"{stats[k]:g}" for k in keys) + f" {unit}"


# --- one table per benchmark, out of its JSON -----------------------------------------------------


def table_of(name: str, result: dict) -> Table:
    """The figures a person looks for, out of one benchmark's JSON, as one table."""
    maker = TABLES.get(name)
    if maker is None:  # a benchmark without its own layout: its top-level figures
        return Table(["figure", "value"], [[k, v] for k, v in result.items() if not isinstance(v, dict | list)])
    return maker(result)


def train_speed_table(result: dict) -> Table:
    columns = ["recipe", "arch", "epochs x batch", "precision", "MNIST test", "training time", "epoch", "images/s"]
    columns += ["time to 99%", "time to 99.5%"]
    rows = [
        [
            f"`{run['name']}`",
            run["arch"],
            f"{run['epochs']} x {run['batch_size']}",
            run["precision"],
            _pct(run["test_accuracy"]),
            _seconds(run["train_seconds"]),
            _seconds(run["epoch_seconds"]),
            f"{run['images_per_second']:,.0f}",
            _seconds(run["seconds_to_99"]),
            _seconds(run["seconds_to_99.5"]),
        ]
        for run in result["runs"]
    ]
    notes = []
    if "speed_ratio_images_per_second" in result:
        notes.append(f"default/seed training images/s in the same run: {result['speed_ratio_images_per_second']}x.")
    if any(run.get("repeats", 1) > 1 for run in result["runs"]):
        notes.append("Medians of the repeats (a warm-up run first).")
    return Table(columns, rows, notes)


def train_step_options_table(result: dict) -> Table:
    rows = [[r["memory_format"], r["threads"], r["precision"], f"{r['images_per_second']:,}"] for r in result["rows"]]
    notes = [f"vggbn, one training step, batch {result['batch_size']}, device {result.get('device', 'cpu')}."]
    return Table(["memory format", "threads", "precision", "images/s"], rows, notes)


def drawn_digits_table(result: dict) -> Table:
    rows = [["all pen digits", f"{result['n']:,}", _pct(result["accuracy"])]]
    rows += [[f"site {s}", f"{r['n']:,}", _pct(r["accuracy"])] for s, r in result["per_source"].items()]
    rows.append(
        [
            "all, canvas shrunk to 28x28 (the seed apps' path)",
            f"{result['n']:,}",
            _pct(result["seed_preprocessing_accuracy"]),
        ]
    )
    return Table(["set", "n", "accuracy"], rows, [f"Model: {result.get('model', 'models/default')}."])


def unseen_writers_table(result: dict) -> Table:
    sites = sorted({s for r in result["recipes"].values() for s in r["per_site"]})
    columns = ["recipe", *sites, "mean", "worst", "all", "MNIST test"]
    rows = [
        [f"`{name}`", *(_pct(r["per_site"][s]["accuracy"]) for s in sites)]
        + [_pct(r["mean"]), _pct(r["worst"]), _pct(r["overall"]), _pct(r["mnist_test"])]
        for name, r in result["recipes"].items()
    ]
    rotated = result["rotated"]
    rows.append(
        ["chosen on the other sites", *(_pct(rotated["per_site"][s]["accuracy"]) for s in sites)]
        + [_pct(rotated["mean"]), _pct(rotated["worst"]), "", ""]
    )
    chosen = ", ".join(f"{s}: {rotated['per_site'][s]['recipe']}" for s in sites)
    return Table(columns, rows, [f"{result['epochs']} epochs per recipe. Chosen for each held-out site: {chosen}."])


def honest_answers_table(result: dict) -> Table:
    columns = ["set", "n", "accuracy", "ECE before", "ECE after", 'answered "not a digit"']
    rows = [
        [label, f"{r['n']:,}", _pct(r["accuracy"]), _pct(r["ece_before"]), _pct(r["ece_after"]), _pct(r["rejected"])]
        for label, r in (("MNIST test", result["mnist_test"]), ("pen digits", result["pen_digits"]))
    ]
    rows += [
        [f"non-digits dev, {source}", f"{r['n']:,}", "", "", "", _pct(r["rejected"])]
        for source, r in result["non_digits_dev"].items()
    ]
    generated = result["generated_validation_negatives"]
    rows.append(["generated, validation glyphs", f"{generated['n']:,}", "", "", "", _pct(generated["rejected"])])
    if "generated_held_out_fonts" in result:
        fonts = result["generated_held_out_fonts"]
        rows.append(["generated, held-out fonts", f"{fonts['n']:,}", "", "", "", _pct(fonts["rejected"])])
    notes = [
        f"Model {result['model']}: temperature {result['temperature']:.3f}, not-digit threshold"
        f" {result['threshold']}. ECE: 15 bins; before = the raw digit softmax."
    ]
    judged = result.get("leave_one_site_out")
    if judged:
        shares = "; ".join(
            f"{label} mean {_pct(judged[key]['mean'])}, worst {_pct(judged[key]['worst'])}"
            for key, label in (
                ("digits", "pen digits answered not a digit"),
                ("non_digits_dev", "non-digits dev caught"),
                ("generated_held_out_fonts", "held-out fonts caught"),
            )
            if key in judged
        )
        thresholds = ", ".join(f"{site} {fold['threshold']:.4f}" for site, fold in judged["sites"].items())
        notes.append(
            f"Leave one site out (threshold fit on the other sites' pen digits, at most {judged['rate']:.0%},"
            f" floor {judged['floor']:.4f}): {shares}. Thresholds: {thresholds}."
        )
    return Table(columns, rows, notes)


def dashboard_latency_table(result: dict) -> Table:
    py = result["python"]
    rows = [
        [
            f"strokes to probabilities, 1 thread, {py.get('drawings', '')} drawings: wall p50 / p99",
            f"{py['p50_ms']} / {py['p99_ms']} ms",
        ],
    ]
    if "cpu_p50_ms" in py:
        rows.append(["the same, CPU time p50 / p99", f"{py['cpu_p50_ms']} / {py['cpu_p99_ms']} ms"])
    if "torch_p99_ms" in py:
        rows.append(
            [
                "the same with torch instead of ONNX Runtime: wall p50 / p99",
                f"{py['torch_p50_ms']} / {py['torch_p99_ms']} ms",
            ]
        )
    kernel = result.get("kernel_import")
    if kernel:
        rows += [
            [
                "fresh interpreter: import the dashboard, load the model: RSS (median)",
                f"{kernel['rss_mib_median']} MiB",
            ],
            ["the same: CPU (median / max)", f"{kernel['cpu_s_median']} / {kernel['cpu_s_max']} s"],
            ["the same: torch imported", "yes" if kernel["torch_imported"] else "no"],
        ]
    web = result.get("browser")
    if web:
        rows += [
            [
                "mouse-up to prediction shown in Chromium: median / max",
                f"{web['mouseup_to_prediction_median_ms']} / {web['mouseup_to_prediction_max_ms']} ms",
            ],
            ["page open to interactive canvas (median)", f"{web['page_open_to_canvas_median_s']} s"],
            ["kernel RSS per open session", f"{web['kernel_rss_per_session_mib']} MiB"],
        ]
        if web.get("sessions_that_fit") is not None:
            rows.append(
                [
                    "sessions that fit in available memory",
                    f"{web['sessions_that_fit']} ({web['memory_available_mib']:,} MiB)",
                ]
            )
    return Table(["figure", "value"], rows)


def voila_attack_table(result: dict) -> Table:
    row = [
        "guarded" if result["guarded"] else "unguarded (jupyter_server's own)",
        result["requests"],
        result["unanswered_within_2s"],
        f"{result['answer_ms_median']} / {result['answer_ms_max']} ms",
        f"{result['server_rss_growth_mib']:+} MiB",
    ]
    columns = ["server", "static-file requests", "unanswered within 2 s", "answer median / max", "server RSS growth"]
    return Table(columns, [row])


CROWD_COLUMNS = [
    "client",
    "visitors",
    "served",
    "page open p50 / p95 / max",
    "stroke end to prediction p50 / p95 / p99 / max",
    "answers saved = rows, each once",
    "peak RSS (PSS), server + kernels",
    "kernel RSS mean / max",
    "kernel start CPU",
    "server CPU per visitor",
]


def crowd_row(result: dict) -> list[object]:
    """One crowd run (protocol-level visitors, or Chromium from load_dashboard.py) as a table row."""
    page, stroke = result["page_open_s"], result["stroke_to_prediction_ms"]
    if "rows_stored" in result:
        once = "yes" if result["answers_stored_exactly_once"] else "NO"
        answers = f"{result['answers_saved']} = {result['rows_stored']}, {once}"
    else:
        answers = f"{result['answers_saved']} saved, rows not read"
    memory = kernel = start = per_visitor = "-"
    if "peak_rss_total_mib" in result:  # a server this run started (or --server-pid): its memory and CPU
        pss = f" ({result['peak_pss_total_mib']:,})" if "peak_pss_total_mib" in result else ""
        memory = f"{result['peak_rss_total_mib']:,}{pss} MiB, {result['kernels_at_peak']} kernels"
        kernel = f"{result['kernel_rss_mib_mean']} / {result['kernel_rss_mib_max']} MiB"
        start = f"{result['kernel_start_cpu_s']} s" if result.get("kernel_start_cpu_s") is not None else "-"
        if result.get("server_cpu_per_visitor_s") is not None:
            per_visitor = f"{result['server_cpu_per_visitor_s']} s"
    return [
        result["client"],
        result["visitors"],
        f"{result['served']}/{result['visitors']}",
        _spread(page, ("p50", "p95", "max"), "s"),
        _spread(stroke, ("p50", "p95", "p99", "max"), "ms"),
        answers,
        memory,
        kernel,
        start,
        per_visitor,
    ]


def crowd_table(result: dict) -> Table:
    who = "simulated on the websocket protocol" if result["client"] == "protocol" else "in Chromium"
    think = "-".join(f"{t:g}" for t in result["think_s"])
    notes = [
        f"Visitors {who}, {result['rate_per_s']:g} arriving a second, {result['drawings_per_visitor']} pen digits"
        f" each, {think} s think time."
    ]
    if result.get("errors"):
        notes.append("Errors: " + "; ".join(f"{n} x {e}" for e, n in result["errors"].items()) + ".")
    return Table(CROWD_COLUMNS, [crowd_row(result)], notes)


def replicas_table(result: dict) -> Table:
    table = crowd_table(result)
    split = "/".join(str(n) for n in result["kernel_websockets_per_replica"])
    table.notes.append(
        f"Through Caddy over {result['replicas']} Voilà replicas; kernel websockets per replica: {split}."
    )
    return table


def feedback_writes_table(result: dict) -> Table:
    rows = [
        ["PostgreSQL", result["postgres_rows_per_second"]],
        ["SQLite", result["sqlite_rows_per_second"]],
    ]
    return Table(["store", "rows written per second"], rows, [f"{result['rows']} rows each."])


def cli_memory_table(result: dict) -> Table:
    rows = [
        [
            "streamed (`digitlib eval-drawings`)",
            f"{result['streamed_peak_rss_mb']} MB",
            f"{result['streamed_seconds']} s",
            result["streamed_exit"],
        ]
    ]
    if "old_peak_rss_mb" in result:
        rows.append(
            [
                "loaded whole first (the old way)",
                f"{result['old_peak_rss_mb']} MB",
                f"{result['old_seconds']} s",
                result["old_exit"],
            ]
        )
    notes = [f"A {result['file_mb']} MB file of {result['drawings']:,} drawings."]
    return Table(["way", "peak RSS", "time", "exit status"], rows, notes)


def feedback_loop_table(result: dict) -> Table:
    rows = [[name, f"{r['n']:,}", _pct(r["before"]), _pct(r["after"])] for name, r in result["sets"].items()]
    decision = result["decision"]
    verdict = "promoted" if decision.get("promote") else "not promoted"
    notes = [
        f"Base {result['base']}; feedback from sites {', '.join(result['feedback_sites'])};"
        f" fine-tuning {result['train_seconds']:.0f} s. Decision: {verdict} ({decision.get('reason', '')})."
    ]
    return Table(["set", "n", "before", "after"], rows, notes)


def poisoned_feedback_table(result: dict) -> Table:
    columns = [
        "attack",
        "rate",
        "checks",
        "injected",
        "flagged (precision / recall)",
        "unseen writers: current -> candidate",
        "feedback held-out (n): current -> candidate",
    ]
    columns += ["gate"]
    rows = []
    for run in result["runs"]:
        flagged = "-"
        if run["checks"]:
            flagged = f"{run['flagged']} ({_pct(run['flag_precision'], 0)} / {_pct(run['flag_recall'], 0)})"
        unseen = f"{_pct(run['current_unseen_accuracy'])} -> {_pct(run['candidate_unseen_accuracy'])}"
        held = run.get("feedback_holdout")  # runs before 2026-12-01 did not report it
        held = f"({held['n']}) {_pct(held['current'])} -> {_pct(held['candidate'])}" if held else "-"
        gate = "promoted" if run["promoted"] else "refused"
        attack = "none (clean)" if run["rate"] == 0 else run["attack"]
        checks = "on" if run["checks"] else "off"
        rows.append([attack, _pct(run["rate"], 0), checks, run["injected"], flagged, unseen, held, gate])
    notes = []
    if "base" in result:
        notes.append(
            f"Base {result['base']}; feedback from {', '.join(result['feedback_sites'])}; unseen writers:"
            f" {result['unseen_writers']} drawings, the gate's pen-digit set {result['gate_pen_digits']};"
            f" {len(result['runs'])} runs in {result['seconds']:.0f} s."
        )
    return Table(columns, rows, notes)


TABLES = {
    "train_speed": train_speed_table,
    "train_step_options": train_step_options_table,
    "drawn_digits": drawn_digits_table,
    "unseen_writers": unseen_writers_table,
    "honest_answers": honest_answers_table,
    "dashboard_latency": dashboard_latency_table,
    "voila_attack": voila_attack_table,
    "crowd": crowd_table,
    "replicas": replicas_table,
    "feedback_writes": feedback_writes_table,
    "cli_memory": cli_memory_table,
    "feedback_loop": feedback_loop_table,
    "poisoned_feedback": poisoned_feedback_table,
}


# --- the report file: sections by heading, the machine once ---------------------------------------


@dataclass
class Section:
    name: str
    body: str  # everything under the heading
    machine: str | None = None  # None: the report's machine

    def markdown(self, report_machine: str) -> str:
        body = self.body.strip("\n")
        if self.name in BENCHMARKS:
            first, _, rest = body.partition("\n")
            first = OWN_MACHINE.sub("", first)  # named again below only if it is not the report's
            if self.machine and self.machine != report_machine:
                first = f"{first} Machine: {self.machine}."
            body = f"{first}\n{rest}".rstrip("\n")
        return f"## {self.name}\n\n{body}\n"


def new_section(name: str, table: Table, command: str, date: str, load: float | None) -> Section:
    load_text = f" Load average at start: {load:.2f}." if load is not None else ""
    return Section(name, f"Command: `{command}`. Date: {date}.{load_text}\n\n{table.markdown()}\n")


OWN_MACHINE = re.compile(r" Machine: (.+?)\.$")  # a section's own machine, ending its first line
MACHINE_LINE = re.compile(r"^Machine: (.+?) \(every section unless it names another\)\.$", flags=re.M)


def parse_report(text: str) -> tuple[str | None, dict[str, Section]]:
    """The machine a report names and its sections, each knowing its own machine."""
    found = MACHINE_LINE.search(text)
    machine = found.group(1) if found else None
    sections = {}
    for chunk in re.split(r"^## ", text, flags=re.M)[1:]:
        name, _, body = chunk.partition("\n")
        own = OWN_MACHINE.search(body.strip("\n").split("\n", 1)[0])
        sections[name.strip()] = Section(name.strip(), body, own.group(1) if own else machine)
    return machine, sections


def report(machine: str, sections: dict[str, Section]) -> str:
    """The whole file: the benchmarks in BENCHMARKS order, then any other section as it was."""
    order = [n for n in BENCHMARKS if n in sections] + [n for n in sections if n not in BENCHMARKS]
    head = [
        TITLE,
        "",
        "Written by `benchmarks/run_all.py` (`make benchmark`): one table per benchmark, its command,",
        "date and load average above it. What each measures and how to read it:",
        "[docs/benchmarks.md](../docs/benchmarks.md).",
        "",
        f"Machine: {machine} (every section unless it names another).",
        "",
    ]
    return "\n".join(head) + "\n" + "\n".join(sections[n].markdown(machine) for n in order)


def update_report(path: Path, machine: str, fresh: dict[str, Section]) -> str:
    """The report at `path` with `fresh` sections replacing (or joining) its own; the rest kept."""
    old_machine, sections = parse_report(path.read_text()) if path.is_file() else (None, {})
    for section in sections.values():
        section.machine = section.machine or old_machine
    sections.update(fresh)
    return report(machine, sections)


# --- running ---------------------------------------------------------------------------------------


def last_json(stdout: str) -> dict:
    """The JSON object a benchmark prints last; consecutive JSON lines at the end are merged."""
    merged: dict = {}
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(value, dict):
            break
        merged = {**value, **merged}
    if not merged:
        raise ValueError("no JSON object on the last line")
    return merged


def command_of(name: str) -> list[str]:
    return [".venv/bin/python", f"benchmarks/{BENCHMARKS[name].script}", *BENCHMARKS[name].args]


def run_benchmark(name: str) -> tuple[dict, str]:
    benchmark = BENCHMARKS[name]
    print(f"== {name}", flush=True)
    done = subprocess.run(
        [sys.executable, str(HERE / benchmark.script), *benchmark.args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=config.PROJ_ROOT,
    )
    print(done.stdout, flush=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed (exit {done.returncode})")
    return last_json(done.stdout), shlex.join(command_of(name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    parser.add_argument("--skip-long", action="store_true", help="leave out the benchmarks that train models")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and their commands, run nothing")
    parser.add_argument("--out", default=str(config.REPORTS_DIR / "benchmarks.md"))
    args = parser.parse_args()

    names = [n for n in (args.only or BENCHMARKS) if not (args.skip_long and BENCHMARKS[n].long)]
    if args.list:
        for name in names:
            print(f"{name:<20} {'long ' if BENCHMARKS[name].long else '     '} {shlex.join(command_of(name))}")
        return
    machine = machine_name()
    out = Path(args.out)
    fresh = {}
    for name in names:
        load = os.getloadavg()[0]
        result, command = run_benchmark(name)
        fresh[name] = new_section(name, table_of(name, result), command, time.strftime("%Y-%m-%d"), load)
        out.write_text(update_report(out, machine, fresh))  # after each one: a later failure keeps it
    print(f"wrote {out}")


def machine_name() -> str:
    import torch

    from digitlib.modeling.train import hardware_name

    gpu = hardware_name(torch.device("cuda")) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {hardware_name(torch.device('cpu'))}, {gpu}"


if __name__ == "__main__":
    main()
