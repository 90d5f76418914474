"""The record of a training run (digitlib.runs): what `digitlib train` and notebook 1.0 both write."""

from __future__ import annotations

import json

import pytest
from helpers import TINY_TRAINING, cli_options

from digitlib.cli import main
from digitlib.dataset import train_val_split
from digitlib.modeling.checkpoint import load_model
from digitlib.modeling.train import TrainConfig, train
from digitlib.runs import record_training_run

pytestmark = pytest.mark.slow  # trains


@pytest.fixture(scope="module")
def tiny_result(mnist_train):
    cfg = TrainConfig(**TINY_TRAINING)
    train_digits, val_digits = train_val_split(mnist_train, cfg.val_size)
    return train(cfg, train_digits, val_digits, progress=False)


def read_json(path) -> dict:
    return json.loads(path.read_text())


def test_a_run_is_recorded_with_its_provenance_and_test_figures(tiny_result, mnist_train, mnist_test, tmp_path):
    metrics = record_training_run(tiny_result, tmp_path / "m", mnist_train, mnist_test.head(500), notebook="x.ipynb")
    metadata = read_json(tmp_path / "m" / "metadata.json")
    assert read_json(tmp_path / "m" / "metrics.json") == metrics == metadata["metrics"]["test"]
    assert metadata["data_checksum"] == mnist_train.checksum() and metadata["notebook"] == "x.ipynb"
    assert metrics["epochs"] == 1 and metrics["config"]["train_subset"] == TINY_TRAINING["train_subset"]
    assert 0.3 < metrics["test_accuracy"] <= 1 and metrics["test_nll"] > 0
    assert load_model(tmp_path / "m").metadata["notebook"] == "x.ipynb"  # loads: weights match their checksum


def test_a_run_without_test_digits_has_no_test_figures(tiny_result, mnist_train, tmp_path):
    metrics = record_training_run(tiny_result, tmp_path / "m", mnist_train)
    assert "test_accuracy" not in metrics and 0 < metrics["val_accuracy"] <= 1
    assert read_json(tmp_path / "m" / "metrics.json") == metrics


def test_the_cli_records_the_same_run_with_its_recipe(mnist_dir, mnist_train, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--out", str(out), "--mnist-dir", str(mnist_dir), "--no-test", "--json",
                 *cli_options(TINY_TRAINING)]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    metadata = read_json(out / "metadata.json")
    assert metadata["recipe"] == "default" and metadata["command"].startswith("digitlib ")
    assert metadata["data_checksum"] == mnist_train.checksum()
    assert read_json(out / "metrics.json") == metadata["metrics"]["test"]
    assert printed["model"] == str(out) and printed["val_accuracy"] == metadata["metrics"]["test"]["val_accuracy"]
