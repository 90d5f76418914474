"""Notebooks: committed clean, parameterised for papermill, and each one executed in CI with tiny
parameters, writing its figures and metrics into a temporary folder (never into models/ or reports/)."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import nbformat
import papermill
import pytest
from helpers import TINY_TRAINING

from digitlib import config, experiments, registry
from digitlib.modeling.checkpoint import load_model
from digitlib.modeling.train import TrainConfig, save_training, train

NOTEBOOKS = sorted(config.NOTEBOOKS_DIR.glob("*.ipynb"))
COMMITTED_NOTEBOOKS = [
    path
    for folder in (config.NOTEBOOKS_DIR, config.PROJ_ROOT / "dashboards")
    for path in sorted(folder.rglob("*.ipynb"))
    if ".ipynb_checkpoints" not in path.parts
]
TRAIN_PARAMETERS = {
    "epochs", "batch_size", "lr", "arch", "augment", "seed", "train_subset", "run_name", "device", "data_dir",
}  # fmt: skip


def notebook_problems(path: Path) -> list[str]:
    """Outputs and execution counts a committed notebook must not carry."""
    nb = nbformat.read(path, as_version=4)
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {i} has outputs")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {i} has execution count {cell.execution_count}")
    return problems


def first_code_cell(path: Path):
    return next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")


# --- hygiene and parameters (fast) -------------------------------------------------------------


def test_notebooks_exist_in_running_order():
    assert [p.name[:3] for p in NOTEBOOKS] == ["1.0", "2.0", "3.0", "4.0"]


@pytest.mark.parametrize("path", COMMITTED_NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs_or_execution_counts(path):
    assert notebook_problems(path) == [], f"{path}: run `nbstripout {path.relative_to(config.PROJ_ROOT)}`"


def test_problem_finder_catches_an_executed_notebook(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1", execution_count=3)])
    nb.cells[0].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=3)]
    nbformat.write(nb, tmp_path / "dirty.ipynb")
    assert notebook_problems(tmp_path / "dirty.ipynb") == ["cell 0 has outputs", "cell 0 has execution count 3"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_holds_only_literal_parameters(path):
    cell = first_code_cell(path)
    assert "parameters" in cell.metadata.get("tags", [])
    # Only plain assignments of literals: a value derived here would ignore injected parameters.
    for statement in ast.parse(cell.source).body:
        assert isinstance(statement, ast.Assign), ast.unparse(statement)
        ast.literal_eval(statement.value)


def test_train_notebook_takes_the_issue_parameters_with_trainconfig_defaults():
    params = papermill.inspect_notebook(str(experiments.TRAIN_NOTEBOOK))
    assert TRAIN_PARAMETERS <= set(params)
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for name in set(params) & set(defaults):
        assert ast.literal_eval(params[name]["default"]) == defaults[name], name


def test_default_model_target_passes_only_parameters_the_train_notebook_takes():
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    dry_run = subprocess.run(
        ["make", "--no-print-directory", "-n", "default-model"],
        cwd=config.PROJ_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    command = next(line for line in dry_run.splitlines() if "run-notebook" in line and "default-train" in line)
    passed = dict(re.findall(r"-p (\S+) (\S+)", command))
    assert set(passed) <= set(papermill.inspect_notebook(str(experiments.TRAIN_NOTEBOOK)))
    assert passed["run_name"] == "default"


# --- every notebook executed with tiny parameters (slow) ----------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, mnist_train):
    """A model trained here for a few seconds, so evaluation never depends on models/default."""
    cfg = TrainConfig(arch="seed", epochs=1, train_subset=3000, augment="none", val_size=0)
    result = train(cfg, mnist_train, None, progress=False)
    return save_training(result, tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def drawings_sample(tmp_path_factory) -> Path:
    """The first drawings of the shared file (several sites), or two synthetic ones without it."""
    target = tmp_path_factory.mktemp("drawings") / "sample.jsonl"
    source = Path(config.DRAWINGS_FILE.get())
    if source.is_file():
        with source.open() as f:
            target.write_text("".join(line for _, line in zip(range(400), f, strict=False)))
    else:
        stroke = [[[140, 40 + 10 * i] for i in range(20)]]
        rows = [{"label": 1, "strokes": stroke, "source": site} for site in ("x", "y")]
        target.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return target


def train_case(tmp_path, request):
    params = {**TINY_TRAINING, "run_name": "ci", "models_dir": str(tmp_path / "m"), "figures_dir": str(tmp_path / "f")}
    model_dir, figure_dir = tmp_path / "m" / "ci", tmp_path / "f" / "ci"
    expected = [model_dir / n for n in ("model.pt", "metadata.json", "metrics.json")]
    expected += [figure_dir / n for n in ("sample_digits.png", "training_curves.png")]

    def check():
        metrics = json.loads((model_dir / "metrics.json").read_text())
        assert metrics["epochs"] == 1 and metrics["config"]["train_subset"] == 1000
        assert 0.5 < metrics["val_accuracy"] <= 1 and 0.5 < metrics["test_accuracy"] <= 1
        assert json.loads((model_dir / "metadata.json").read_text())["metrics"]["test"] == metrics
        assert not (config.MODELS_DIR / "ci").exists() and not (config.FIGURES_DIR / "ci").exists()

    return params, expected, check


def evaluate_case(tmp_path, request):
    model, drawings = request.getfixturevalue("tiny_model"), request.getfixturevalue("drawings_sample")
    params = {"model": str(model), "drawings_file": str(drawings), "name": "ci", "figures_dir": str(tmp_path / "f")}
    figure_dir = tmp_path / "f" / "ci"
    names = ("confusion_matrix", "per_class_accuracy", "misclassified", "reliability")
    expected = [figure_dir / f"{n}.png" for n in (*names, "drawings_per_site", "drawings_errors")]
    expected.append(figure_dir / "evaluation.json")

    def check():
        metrics = json.loads((figure_dir / "evaluation.json").read_text())
        assert metrics["test"]["n"] == 10_000 and 0 <= metrics["test"]["ece"] <= 1
        sites = {json.loads(line)["source"] for line in drawings.read_text().splitlines()}
        assert set(metrics["drawings"]["per_source"]) == sites
        assert metrics["drawings"]["n"] == len(drawings.read_text().splitlines())

    return params, expected, check


@pytest.fixture(scope="module")
def feedback_db(tmp_path_factory, tiny_model, drawings_sample) -> str:
    """A SQLite feedback store answered by simulated visitors with the sample drawings."""
    from digitlib.drawings import load_drawings
    from digitlib.simulate import submit_drawings
    from digitlib.store import FeedbackStore

    folder = tmp_path_factory.mktemp("feedback")
    url = f"sqlite:///{folder / 'feedback.db'}"
    store = FeedbackStore(url, queue_file=folder / "queue.jsonl")
    submit_drawings(store, load_model(tiny_model), load_drawings(drawings_sample)[:120])
    store.dispose()
    return url


def analyse_case(tmp_path, request):
    params = {"database_url": request.getfixturevalue("feedback_db"), "figures_dir": str(tmp_path / "f"), "name": "ci"}
    figure_dir = tmp_path / "f" / "ci"
    names = ("submissions", "confusion_matrix", "accuracy_per_version", "reliability", "misrecognised")
    expected = [figure_dir / f"{n}.png" for n in names] + [figure_dir / "analysis.json"]

    def check():
        summary = json.loads((figure_dir / "analysis.json").read_text())
        assert summary["n"] == 120 and 0 <= summary["said_correct"] <= 1
        assert summary["database"] == params["database_url"]

    return params, expected, check


def retrain_case(tmp_path, request):
    models = tmp_path / "models"
    shutil.copytree(request.getfixturevalue("tiny_model"), models / "default")
    params = {
        "database_url": request.getfixturevalue("feedback_db"), "export_dir": str(tmp_path / "export"),
        "drawings_file": str(request.getfixturevalue("drawings_sample")), "models_dir": str(models),
        "figures_dir": str(tmp_path / "f"), "run_name": "ci", "mnist_subset": 1000, "mnist_test_size": 2000,
        "epochs": 1, "oversample": 3, "augment": "none",
    }  # fmt: skip
    expected = [tmp_path / "f" / "ci" / n for n in ("comparison.png", "retrain.json")]
    expected += [models / "ci" / n for n in ("model.pt", "registry.json")] + [tmp_path / "export" / "manifest.json"]

    def check():
        report = json.loads((tmp_path / "f" / "ci" / "retrain.json").read_text())
        table = report["table"]
        assert set(table["n"]) == {"mnist_test", "feedback_holdout", "mnist_validation", "drawings"}
        assert table["n"]["mnist_test"] == 2000
        decision = registry.decide(
            {k: table["candidate"][k] for k in table["n"]}, {k: table["current"][k] for k in table["n"]}, 0.002
        )
        assert report["decision"]["promote"] == decision.promote == report["promoted"]
        assert registry.read_pointer(models).current == ("ci" if decision.promote else "default")
        assert not (config.MODELS_DIR / "ci").exists()

    return params, expected, check


CI_CASES = {
    "1.0-dl-train-cnn.ipynb": train_case,
    "2.0-dl-evaluate-model.ipynb": evaluate_case,
    "3.0-dl-analyse-feedback.ipynb": analyse_case,
    "4.0-dl-retrain-with-feedback.ipynb": retrain_case,
}


def test_every_notebook_has_ci_parameters():
    assert {p.name for p in NOTEBOOKS} == set(CI_CASES)


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_writes_figures_and_metrics(notebook, tmp_path, request, capfd):
    if notebook.name not in CI_CASES:
        pytest.fail(f"{notebook.name} has no tiny parameters in CI_CASES")
    params, expected, check = CI_CASES[notebook.name](tmp_path, request)
    run = experiments.run_notebook(notebook, tmp_path / "report.ipynb", params, timeout=300)
    assert run.status == "ok", run.error
    assert [p for p in expected if not p.is_file()] == []
    check()
    html = run.html.read_text()
    assert html.count("data:image/png") >= 2  # figures embedded: the report opens anywhere
    assert notebook_problems(notebook) == []  # running it left the committed notebook clean
    # Stands alone offline: no widget (its script would come from a CDN), progress as text.
    assert "widget-view" not in run.notebook.read_text() and "html-manager" not in html
    assert not re.search(r"<script[^>]* src=\"https?://", html)  # require.js, MathJax: nothing here uses them
    if notebook.name in ("1.0-dl-train-cnn.ipynb", "4.0-dl-retrain-with-feedback.ipynb"):
        assert re.search(r"epoch 1/1: train loss \d\.\d{4} acc \d+\.\d\d%", html)
    # Known-harmless noise of kernels, nbconvert and shutdown is gone from the run's output.
    printed = capfd.readouterr()
    for noise in ("without encryption", "Alternative text is missing", "KeyboardInterrupt"):
        assert noise not in printed.out + printed.err


@pytest.mark.slow
def test_evaluate_notebook_skips_drawings_when_the_file_is_missing(tmp_path, tiny_model):
    params = {"model": str(tiny_model), "drawings_file": str(tmp_path / "none.jsonl"), "name": "x"}
    run = experiments.run_notebook(
        experiments.EVALUATE_NOTEBOOK, tmp_path / "r.ipynb", {**params, "figures_dir": str(tmp_path)}, html=False
    )
    assert run.status == "ok", run.error
    assert json.loads((tmp_path / "x" / "evaluation.json").read_text())["drawings"] is None
    assert not (tmp_path / "x" / "drawings_per_site.png").exists()
