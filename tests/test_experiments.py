"""Sweeps: reading the YAML grid, checking parameters, merging the table, and two tiny runs end to end."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from digitlib import config, experiments
from digitlib.cli import main

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
    with pytest.raises(ValueError, match=r"no parameters \['learning_rate'\]"):
        experiments.check_parameters(experiments.TRAIN_NOTEBOOK, [{"learning_rate": 0.1, "run_name": "a"}])


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
