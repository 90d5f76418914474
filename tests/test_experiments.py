"""Sweeps: reading the YAML grid, checking parameters, merging the table, and two tiny runs end to end."""

from __future__ import annotations

import json
import shutil
import subprocess

import nbformat
import pandas as pd
import pytest

from digitlib import config, experiments
from digitlib.cli import main
from digitlib.modeling.train import TrainConfig, epoch_line, train

SWEEP_FILES = sorted((config.PROJ_ROOT / "experiments").glob("*.yaml"))


def write(path, text):
    path.write_text(text)
    return path


def test_grid_and_runs_expand_on_top_of_base(tmp_path):
    spec = write(
        tmp_path / "s.yaml",
        "name: demo\nbase: {epochs: 1, lr: 0.1}\ngrid: {arch: [seed, vggbn], lr: [1e-3, 3e-3]}\n"
        "runs:\n  - {augment: none, run_name: plain}\n",
    )
    sweep = experiments.load_sweep(spec)
    assert sweep.notebook == experiments.TRAIN_NOTEBOOK
    assert [r["run_name"] for r in sweep.runs] == ["demo-01", "demo-02", "demo-03", "demo-04", "plain"]
    assert sweep.runs[1] == {"epochs": 1, "arch": "seed", "lr": 0.003, "run_name": "demo-02"}
    assert sweep.runs[4] == {"epochs": 1, "lr": 0.1, "augment": "none", "run_name": "plain"}


def test_exponent_floats_are_numbers_not_strings(tmp_path):
    # Plain PyYAML reads 1e-3 as the string "1e-3"; the notebook would then fail on lr.
    sweep = experiments.load_sweep(write(tmp_path / "s.yaml", "grid: {lr: [1e-3, 5E+2, 0.5, 3]}\n"))
    assert [r["lr"] for r in sweep.runs] == [0.001, 500.0, 0.5, 3]
    assert isinstance(sweep.runs[3]["lr"], int)
    assert sweep.name == "s"  # the file's name when none is given


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("grid: {lr: [1]}\nrns: []\n", "unknown keys"),
        ("name: x\n", "no runs"),
        ("runs: [{run_name: a}, {run_name: a}]\n", "run names repeat"),
    ],
)
def test_bad_sweep_files_are_refused(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        experiments.load_sweep(write(tmp_path / "bad.yaml", text))


def test_misspelt_parameter_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match=r"no parameter 'learning_rate'; it takes arch, augment"):
        experiments.check_parameters(experiments.TRAIN_NOTEBOOK, [{"learning_rate": 0.1, "run_name": "a"}])


def test_misspelt_parameter_names_the_close_match():
    with pytest.raises(ValueError, match=r"no parameter 'epoch' \(did you mean 'epochs'\?\)"):
        experiments.check_parameters(experiments.TRAIN_NOTEBOOK, [{"epoch": 1}])


@pytest.mark.parametrize("notebook", sorted(config.NOTEBOOKS_DIR.glob("*.ipynb")), ids=lambda p: p.name)
def test_run_notebook_refuses_unknown_names_before_it_runs(notebook, tmp_path):
    with pytest.raises(ValueError, match="did you mean 'figures_dir'"):
        experiments.run_notebook(notebook, tmp_path / "out.ipynb", {"figure_dir": "x"})
    assert list(tmp_path.iterdir()) == []


def test_parameter_values_are_read_as_papermill_reads_them():
    values = ["3", "3e-4", "0.5", "True", "False", "None", "vggbn", "models/x", "-2"]
    assert [experiments.parse_value(v) for v in values] == [3, 3e-4, 0.5, True, False, None, "vggbn", "models/x", -2]


def test_cli_run_notebook_refuses_a_misspelt_parameter(capsys):
    code = main(["run-notebook", str(experiments.TRAIN_NOTEBOOK), "/nonexistent/x.ipynb", "-p", "epoch", "1"])
    assert code == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err


@pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")
@pytest.mark.parametrize(
    ("target", "variable"),
    [
        ("reports", "TRAIN_PARAMS=-p epoch 1"),
        ("retrain", "RETRAIN_PARAMS=-p oversampel 5"),
        ("analyse", "ANALYSE_PARAMS=-p frequency h"),
    ],
)
def test_make_refuses_a_misspelt_notebook_parameter_before_it_runs(target, variable):
    run = "h6-typo-check"
    done = subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", target, f"RUN={run}", variable],
        cwd=config.PROJ_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "did you mean" in done.stderr and "no parameter" in done.stderr
    # Refused before anything ran: no report, no model.
    assert not (config.REPORTS_DIR / f"{run}-train.ipynb").exists() and not (config.MODELS_DIR / run).exists()


def test_history_table_keeps_the_learning_rate_magnitude():
    history = [{"epoch": 1, "train_loss": 0.123456, "lr": 3e-5, "seconds": 2.0}]
    table = experiments.history_table(history)
    assert table.loc[1, "lr"] == "3.00e-05" and table.loc[1, "train_loss"] == 0.1235


def test_html_export_keeps_the_text_of_widgets_and_needs_no_widget_script(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("bar")])
    view = {"model_id": "abc", "version_major": 2, "version_minor": 0}
    data = {"application/vnd.jupyter.widget-view+json": view, "text/plain": "epochs: 100% 3/3"}
    nb.cells[0].outputs = [nbformat.v4.new_output("display_data", data)]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    nbformat.write(nb, tmp_path / "r.ipynb")
    html = experiments.export_html(tmp_path / "r.ipynb").read_text()
    assert "epochs: 100% 3/3" in html
    assert "html-manager" not in html and "widget-view" not in html
    assert '<script src="https://' not in html  # neither require.js nor MathJax: nothing here needs them


def test_epoch_line_shows_training_and_validation_time_and_the_learning_rate():
    record = {"epoch": 2, "train_loss": 0.2, "train_accuracy": 0.95, "val_loss": 0.1, "val_accuracy": 0.975,
              "lr": 3e-5, "seconds": 4.0, "images_per_second": 13750.0}  # fmt: skip
    line = epoch_line(record, 5, val_seconds=0.9)
    assert line == (
        "epoch 2/5: train loss 0.2000 acc 95.00%, val loss 0.1000 acc 97.50%, "
        "lr 3.00e-05, 4.0 s training + 0.9 s validation (13,750 images/s)"
    )


@pytest.mark.slow
def test_reports_print_a_line_per_epoch_and_no_bar(mnist_train, capsys, monkeypatch):
    monkeypatch.setenv(experiments.PROGRESS_ENV, "lines")
    cfg = TrainConfig(arch="seed", epochs=2, train_subset=256, augment="none", val_size=0, precision="fp32")
    train(cfg, mnist_train, None)
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines()] == ["epoch 1/2", "epoch 2/2"]
    assert "it/s" not in err and "epochs:" not in err  # no tqdm bar


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_committed_sweeps_are_valid(path):
    sweep = experiments.load_sweep(path)
    experiments.check_parameters(sweep.notebook, sweep.runs)
    assert len(sweep.runs) >= 2


def test_merge_replaces_the_sweeps_own_rows_and_keeps_others(tmp_path):
    csv = tmp_path / "experiments.csv"
    experiments.merge_experiments(pd.DataFrame({"sweep": ["a", "a"], "run_name": ["a-1", "a-2"]}), csv)
    experiments.merge_experiments(pd.DataFrame({"sweep": ["b"], "run_name": ["b-1"], "lr": [0.1]}), csv)
    experiments.merge_experiments(pd.DataFrame({"sweep": ["a"], "run_name": ["a-3"]}), csv)
    table = pd.read_csv(csv)
    assert table["run_name"].tolist() == ["b-1", "a-3"]


def test_project_paths_never_depend_on_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert experiments.project_path("models/x") == config.PROJ_ROOT / "models" / "x"
    assert experiments.project_path(tmp_path / "y") == tmp_path / "y"
    assert experiments.run_paths("r") == (config.MODELS_DIR / "r", config.FIGURES_DIR / "r")
    assert experiments.run_paths("r", tmp_path / "m", "f") == (tmp_path / "m" / "r", config.PROJ_ROOT / "f" / "r")


@pytest.mark.slow
def test_sweep_of_two_tiny_runs_and_a_failing_one_end_to_end(tmp_path, capsys):
    spec = write(
        tmp_path / "tiny.yaml",
        "name: tiny\n"
        "base: {epochs: 1, arch: seed, train_subset: 1000, augment: none, val_size: 1000}\n"
        "grid: {lr: [1e-3, 3e-3]}\n"
        "runs: [{arch: no-such-arch, run_name: broken}]\n",
    )
    reports, models = tmp_path / "reports", tmp_path / "models"
    code = main(["sweep", str(spec), "--reports-dir", str(reports), "--models-dir", str(models), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {
        "sweep": "tiny",
        "runs": 3,
        "failed": 1,
        "table": str(reports / "experiments.csv"),
        "plot": str(reports / "figures" / "tiny" / "comparison.png"),
    }

    table = pd.read_csv(reports / "experiments.csv").set_index("run_name")
    assert table.loc[["tiny-01", "tiny-02"], "lr"].tolist() == [0.001, 0.003]
    assert table["status"].to_dict() == {"tiny-01": "ok", "tiny-02": "ok", "broken": "failed"}
    for run in ("tiny-01", "tiny-02"):
        metrics = json.loads((models / run / "metrics.json").read_text())
        assert table.loc[run, "val_accuracy"] == pytest.approx(metrics["val_accuracy"])
        assert 0.5 < metrics["val_accuracy"] <= 1
        assert (reports / "figures" / run / "training_curves.png").is_file()
    # The failed run is kept as a report (notebook and HTML) and its error is in the table.
    assert "no-such-arch" in table.loc["broken", "error"]
    assert pd.isna(table.loc["broken", "val_accuracy"])
    assert (reports / "tiny" / "broken.ipynb").is_file() and (reports / "tiny" / "broken.html").is_file()
    assert (reports / "figures" / "tiny" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert not (config.MODELS_DIR / "tiny-01").exists()


def test_leave_one_site_out_judges_each_site_by_a_choice_made_on_the_others():
    per_site = {
        "steady": {"a": 0.97, "b": 0.97, "c": 0.97},
        # Best on site a alone, poor elsewhere: chosen only where a is not being judged.
        "lucky": {"a": 0.99, "b": 0.90, "c": 0.99},
    }
    rotated = experiments.leave_one_site_out(per_site)
    assert rotated["a"] == {"recipe": "steady", "accuracy": 0.97}  # others: steady 0.97 vs lucky 0.945
    assert rotated["b"] == {"recipe": "lucky", "accuracy": 0.90}  # others: lucky 0.99 vs steady 0.97
    assert rotated["c"] == {"recipe": "steady", "accuracy": 0.97}


def test_leave_one_site_out_refuses_recipes_on_different_sites():
    with pytest.raises(ValueError, match="covers sites"):
        experiments.leave_one_site_out({"x": {"a": 1.0, "b": 1.0}, "y": {"a": 1.0}})
    with pytest.raises(ValueError, match="at least two sites"):
        experiments.leave_one_site_out({"x": {"a": 1.0}})
    with pytest.raises(ValueError, match="no recipes"):
        experiments.leave_one_site_out({})
