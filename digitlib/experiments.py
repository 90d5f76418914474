"""Notebook runs and sweeps: papermill execution, HTML reports, metrics files, comparison table.

A run executes a notebook with parameters into reports/ and exports it to HTML so it opens
without Jupyter. A sweep (a YAML file, see experiments/) runs a grid of parameter sets
through the train notebook; a run that fails is kept as a report and marked failed, and the
sweep goes on. Results land in reports/experiments.csv and a comparison plot.
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml

from digitlib import config

log = logging.getLogger(__name__)

TRAIN_NOTEBOOK = config.NOTEBOOKS_DIR / "1.0-dl-train-cnn.ipynb"
EVALUATE_NOTEBOOK = config.NOTEBOOKS_DIR / "2.0-dl-evaluate-model.ipynb"
METRICS_FILE = "metrics.json"
EXPERIMENTS_CSV = config.REPORTS_DIR / "experiments.csv"
# Scalar figures of a train run's metrics.json that the comparison table keeps.
TABLE_METRICS = ("val_accuracy", "val_loss", "train_accuracy", "test_accuracy", "train_seconds")


def project_path(path: str | Path) -> Path:
    """A path as given when absolute, else relative to the project root (never to the cwd)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else config.PROJ_ROOT / path


def run_paths(run_name: str, models_dir=None, figures_dir=None) -> tuple[Path, Path]:
    """Model directory and figures folder of a run: models/<run>/ and reports/figures/<run>/."""
    models_root = project_path(models_dir) if models_dir else config.MODELS_DIR
    figures_root = project_path(figures_dir) if figures_dir else config.FIGURES_DIR
    return models_root / run_name, figures_root / run_name


def write_metrics(path: str | Path, metrics: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return path


def read_metrics(path: str | Path) -> dict:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def training_metrics(result, test_summary: dict | None = None) -> dict:
    """JSON-ready figures of a training run (a TrainResult): last epoch, timings, test set."""
    last = result.history[-1]
    # An ensemble's history holds each member's epochs; its validation figures are the ensemble's own.
    epochs = sum(1 for record in result.history if record.get("member") == last.get("member"))
    val = {k: result.extra[k] for k in ("val_loss", "val_accuracy") if k in result.extra}
    metrics = {
        "epochs": epochs,
        **{k: last[k] for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy") if k in last},
        **val,
        "train_seconds": round(result.train_seconds, 2),
        "images_per_second": round(result.images_per_second, 1),
        "device": result.device,
        "precision": result.precision,
        "hardware": result.hardware,
        "config": result.config.to_dict(),
    }
    if test_summary:
        metrics["test_accuracy"] = test_summary["accuracy"]
        metrics["test_nll"] = test_summary["nll"]
    return metrics


def history_table(history: list[dict]) -> pd.DataFrame:
    """The per-epoch history as a table to show under the curves (seconds: training only).

    The learning rate keeps its magnitude (rounding to 4 places showed 3e-5 as 0.0).
    """
    frame = pd.DataFrame(history)
    table = frame.set_index(["member", "epoch"] if "member" in frame else "epoch")
    rounded = table.drop(columns=["lr"], errors="ignore").round(4)
    if "lr" in table:
        rounded.insert(0, "lr", [f"{v:.2e}" for v in table["lr"]])
    return rounded


def evaluation_metrics(model, test_summary: dict, ece: float, drawings_summary: dict | None) -> dict:
    """JSON-ready figures of the evaluate notebook (per-image lists left out)."""
    test = {k: v for k, v in test_summary.items() if k != "misclassified"}
    return {
        "model": str(model.path),
        "version": model.version,
        "test": {**test, "ece": ece},
        "drawings": drawings_summary,
    }


# ---------------------------------------------------------------------------------------------
# Running one notebook


@dataclass
class NotebookRun:
    """What became of one papermill run; a failed run still has its executed notebook."""

    name: str
    parameters: dict
    notebook: Path
    html: Path | None
    status: str  # "ok" or "failed"
    error: str = ""
    seconds: float = 0.0


# A widget (tqdm's bar in Lab) is drawn by a script from a CDN in an HTML export; its text form
# is kept instead, so a report opens offline.
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# Kernels started for reports get this: digitlib.modeling.train then prints a line per epoch
# instead of drawing a widget (Lab keeps its live bar).
PROGRESS_ENV = "DIGITLIB_PROGRESS"
KERNEL_NAME = "digitlab"  # the notebooks' kernelspec; `make setup` and `make lab` install it
KERNEL_DISPLAY_NAME = "Python (digitlab)"


def _no_alt_text_warning(record: logging.LogRecord) -> bool:
    """nbconvert's warning about images without alt text: harmless here, the markdown around each
    figure says what it shows."""
    return "Alternative text is missing" not in record.getMessage()


def _without_unused_cdn_scripts(body: str, nb, require_js_url: str) -> str:
    """Drop the template's CDN scripts that nothing in this notebook uses: require.js (for
    JavaScript outputs) and MathJax (for $math$ in markdown), so the page asks no server."""
    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    if not any(k.startswith("application/javascript") for o in outputs for k in o.get("data", {})):
        body = body.replace(f'<script src="{require_js_url}"></script>', "")
    if not any(cell.cell_type == "markdown" and "$" in cell.source for cell in nb.cells):
        body = re.sub(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", "", body, flags=re.S)
    return body


def export_html(notebook: str | Path) -> Path:
    """Write <notebook>.html beside it (figures embedded, no widget scripts: it opens offline)."""
    import nbformat
    from nbconvert import HTMLExporter

    notebook = Path(notebook)
    nb = nbformat.read(notebook, as_version=4)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_MIME in data and len(data) > 1:
                del data[WIDGET_MIME]
    exporter = HTMLExporter()
    if _no_alt_text_warning not in exporter.log.filters:
        exporter.log.addFilter(_no_alt_text_warning)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": notebook.stem}})
    body = _without_unused_cdn_scripts(body, nb, exporter.require_js_url)
    target = notebook.with_suffix(".html")
    target.write_text(body, encoding="utf-8")
    return target


def _describe(error: Exception) -> str:
    """One line: the exception raised inside the notebook, or the one papermill hit."""
    ename, evalue = getattr(error, "ename", None), getattr(error, "evalue", None)
    text = f"{ename}: {evalue}" if ename else f"{type(error).__name__}: {error}"
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def notebook_parameters(notebook: str | Path) -> dict:
    """The names a notebook's `parameters` cell takes, with papermill's description of each."""
    import papermill

    papermill_log = logging.getLogger("papermill")
    level = papermill_log.level
    papermill_log.setLevel(logging.WARNING)  # not its "Input Notebook: ..." line for a look inside
    try:
        return papermill.inspect_notebook(str(project_path(notebook)))
    finally:
        papermill_log.setLevel(level)


def check_parameters(notebook: str | Path, runs: list[dict]) -> None:
    """Refuse names the notebook does not take, naming the closest one it does: papermill would
    only warn, and the run would silently use the default (`-p epoch 1` trains 20 epochs)."""
    known = sorted(notebook_parameters(notebook))
    for run in runs:
        unknown = sorted(set(run) - set(known))
        if unknown:
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, known, n=1)
                hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
            raise ValueError(f"{Path(notebook).name} has no parameter {', '.join(hints)}; it takes {', '.join(known)}")


def parse_value(text: str):
    """A `-p name value` value as papermill's command line reads it: bool, None, int, float or str."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def ensure_kernel() -> str:
    """Install the project's kernelspec (this Python) when it is missing; returns its name."""
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL_NAME not in KernelSpecManager().find_kernel_specs():
        from ipykernel.kernelspec import install

        install(kernel_name=KERNEL_NAME, display_name=KERNEL_DISPLAY_NAME, prefix=sys.prefix)
        log.info("installed the %s kernel (%s) for this Python", KERNEL_NAME, sys.executable)
    return KERNEL_NAME


def _ipc_kernel_manager():
    """Kernels over local sockets (ipc): no "running over TCP without encryption" warning,
    and no port another user on the machine could connect to."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_default(self):
            return "ipc"

        async def _async_interrupt_kernel(self):
            # jupyter_client interrupts before every shutdown; a finished run's kernel is idle, and
            # the interrupt only made it log "KeyboardInterrupt caught in kernel".
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

    return IPCKernelManager


@contextlib.contextmanager
def _report_progress():
    """Kernels started inside print progress as text lines (see PROGRESS_ENV)."""
    before = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = "lines"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = before


def run_notebook(
    notebook: str | Path,
    output: str | Path,
    parameters: dict | None = None,
    html: bool = True,
    timeout: int | None = None,
    progress: bool = False,
) -> NotebookRun:
    """Execute `notebook` with `parameters` into `output` (+ HTML); never raises for a failed run.

    Unknown parameter names are refused (ValueError) before anything runs.
    """
    import papermill

    parameters = dict(parameters or {})
    check_parameters(notebook, [parameters])
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    status, error = "ok", ""
    try:
        with _report_progress():
            papermill.execute_notebook(
                str(notebook),
                str(output),
                parameters=parameters,
                kernel_name=ensure_kernel(),
                progress_bar=progress,
                execution_timeout=timeout,
                cwd=str(config.PROJ_ROOT),
                kernel_manager_class=_ipc_kernel_manager(),
            )
    except Exception as e:  # a failing run is a result to record, whatever went wrong in it
        status, error = "failed", _describe(e)
        log.warning("%s failed: %s", output.name, error)
    seconds = time.perf_counter() - start
    page = export_html(output) if html and output.is_file() else None
    return NotebookRun(output.stem, parameters, output, page, status, error, seconds)


# ---------------------------------------------------------------------------------------------
# Sweeps


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: PyYAML reads `1e-3` (no dot) as a string, a trap in learning rates."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)$|^[-+]?(?:\d+\.\d*|\.\d+)$"),
    list("-+0123456789."),
)


@dataclass
class Sweep:
    """Named parameter sets for one notebook; `runs` are complete, each with its run_name."""

    name: str
    notebook: Path
    runs: list[dict] = field(default_factory=list)


def expand_runs(name: str, base: dict, grid: dict, runs: list[dict]) -> list[dict]:
    """Every combination of `grid` then each explicit run, on top of `base`, named <sweep>-NN."""
    keys = list(grid)
    combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())] if keys else []
    out = []
    for i, overrides in enumerate([*combos, *runs], 1):
        out.append({**base, **overrides, "run_name": overrides.get("run_name", f"{name}-{i:02d}")})
    names = [r["run_name"] for r in out]
    if len(set(names)) != len(names):
        raise ValueError(f"sweep {name!r}: run names repeat: {names}")
    return out


def load_sweep(path: str | Path) -> Sweep:
    """Read a sweep file: name, notebook (default: the train notebook), base, grid, runs."""
    path = project_path(path)
    spec = yaml.load(path.read_text(), Loader=_Loader) or {}
    unknown = set(spec) - {"name", "notebook", "base", "grid", "runs", "description"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    name = str(spec.get("name") or path.stem)
    notebook = project_path(spec.get("notebook") or TRAIN_NOTEBOOK)
    grid = {k: v if isinstance(v, list) else [v] for k, v in (spec.get("grid") or {}).items()}
    runs = expand_runs(name, spec.get("base") or {}, grid, spec.get("runs") or [])
    if not runs:
        raise ValueError(f"{path}: no runs (give a grid, runs, or both)")
    return Sweep(name, notebook, runs)


def _table_row(sweep: Sweep, run: NotebookRun, metrics: dict, reports_dir: Path) -> dict:
    shown = {k: v for k, v in run.parameters.items() if k not in ("run_name", "models_dir", "figures_dir")}
    return {
        "sweep": sweep.name,
        "run_name": run.name,
        "status": run.status,
        "error": run.error,
        **shown,
        **{k: metrics.get(k) for k in TABLE_METRICS},
        "report": str(_relative(run.notebook, reports_dir)),
        "seconds": round(run.seconds, 1),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return path


def merge_experiments(table: pd.DataFrame, csv_path: Path) -> pd.DataFrame:
    """Replace this sweep's rows in the shared table, keeping other sweeps' rows."""
    if csv_path.is_file():
        previous = pd.read_csv(csv_path)
        previous = previous[~previous["sweep"].isin(table["sweep"].unique())]
        table = pd.concat([previous, table], ignore_index=True) if len(previous) else table
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(csv_path, index=False)
    return table


@dataclass
class SweepResult:
    table: pd.DataFrame  # this sweep's rows
    csv: Path
    plot: Path

    @property
    def failed(self) -> int:
        return int((self.table["status"] != "ok").sum())


def run_sweep(
    sweep: Sweep,
    reports_dir: str | Path | None = None,
    models_dir: str | Path | None = None,
    timeout: int | None = None,
) -> SweepResult:
    """Run every parameter set; reports in <reports>/<sweep>/, table and plot updated at the end."""
    import matplotlib.pyplot as plt

    from digitlib import plots

    reports_dir = project_path(reports_dir) if reports_dir else config.REPORTS_DIR
    models_root = project_path(models_dir) if models_dir else config.MODELS_DIR
    figures_root = reports_dir / "figures"
    check_parameters(sweep.notebook, sweep.runs)
    rows = []
    for i, params in enumerate(sweep.runs, 1):
        log.info("sweep %s: run %d/%d %s", sweep.name, i, len(sweep.runs), params["run_name"])
        params = {**params, "models_dir": str(models_root), "figures_dir": str(figures_root)}
        output = reports_dir / sweep.name / f"{params['run_name']}.ipynb"
        run = run_notebook(sweep.notebook, output, params, timeout=timeout)
        model_dir, _ = run_paths(params["run_name"], models_root, figures_root)
        metrics = read_metrics(model_dir / METRICS_FILE) if run.status == "ok" else {}
        rows.append(_table_row(sweep, run, metrics, reports_dir))
    table = pd.DataFrame(rows)
    csv_path = reports_dir / EXPERIMENTS_CSV.name
    merge_experiments(table, csv_path)
    fig = plots.sweep_comparison(table.assign(label=_run_labels(table, sweep.runs)))
    plot = plots.save_figure(fig, figures_root / sweep.name / "comparison.png")
    plt.close(fig)  # no notebook shows it: free it
    return SweepResult(table, csv_path, plot)


def _run_labels(table: pd.DataFrame, runs: list[dict]) -> list[str]:
    """Run name plus the parameters that differ between runs, for the plot's axis."""
    varying = [k for k in runs[0] if k != "run_name" and len({repr(r.get(k)) for r in runs}) > 1]
    varying += [k for r in runs for k in r if k not in runs[0] and k not in varying]
    return [
        "\n".join([run["run_name"], *(f"{k}={run.get(k)}" for k in varying)])
        for run in runs
        if run["run_name"] in set(table["run_name"])
    ]


# --- judging recipes on writers they never met -----------------------------------------------


def leave_one_site_out(per_site: dict[str, dict[str, float]]) -> dict[str, dict]:
    """For each site, the recipe best on the other sites (mean of their accuracies) and its accuracy there.

    `per_site` maps recipe -> site -> accuracy; every recipe must cover the same sites. The
    figure a site gets is that of a choice made without looking at it: an honest estimate of
    how the selection procedure does on writers it never met. Ties go to the recipe listed first.
    """
    if not per_site:
        raise ValueError("no recipes to choose from")
    sites = sorted(next(iter(per_site.values())))
    for name, accuracies in per_site.items():
        if sorted(accuracies) != sites:
            raise ValueError(f"recipe {name!r} covers sites {sorted(accuracies)}, not {sites}")
    if len(sites) < 2:
        raise ValueError("leaving a site out needs at least two sites")
    out = {}
    for held_out in sites:
        others = [s for s in sites if s != held_out]
        chosen = max(per_site, key=lambda name: sum(per_site[name][s] for s in others) / len(others))
        out[held_out] = {"recipe": chosen, "accuracy": per_site[chosen][held_out]}
    return out
