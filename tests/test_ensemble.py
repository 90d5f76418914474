"""Ensembles: members trained with consecutive seeds, logits averaged, saved, served and joined by the CLI."""

import json
import subprocess
import sys

import pytest
import torch

from digitlib import experiments, plots
from digitlib.dataset import train_val_split
from digitlib.modeling.checkpoint import load_model
from digitlib.modeling.models import Ensemble
from digitlib.modeling.train import TrainConfig, save_training, train
from digitlib.serving import load_onnx_model

pytestmark = pytest.mark.slow  # every test here trains


def small_config(**kw):
    settings = {"epochs": 1, "train_subset": 2000, "augment": "none", "precision": "fp32", "negatives": 0.1}
    return TrainConfig(**{**settings, "redraw": 0.0, "stroke_digits": 0.0, **kw})


@pytest.fixture(scope="module")
def split(mnist_train):
    return train_val_split(mnist_train, 1000)


@pytest.fixture(scope="module")
def pair(split):
    return train(small_config(members=2), *split, progress=False)


def test_members_are_the_runs_of_consecutive_seeds_and_their_logits_are_averaged(pair, split, mnist_test):
    assert isinstance(pair.model, Ensemble) and len(pair.model.members) == 2
    alone = train(small_config(seed=1), *split, progress=False).model.state_dict()
    second = pair.model.members[1].state_dict()
    assert all(torch.equal(alone[k], second[k]) for k in alone)  # member 2 is the seed-1 run
    x = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        expected = (pair.model.members[0](x) + pair.model.members[1](x)) / 2
        assert torch.allclose(pair.model(x), expected, atol=1e-6)
    assert [m["seed"] for m in pair.extra["members"]] == [0, 1]
    assert pair.config.members == 2 and "temperature" in pair.extra["calibration"]


def test_history_and_metrics_tell_members_apart(pair):
    assert [(r["member"], r["epoch"]) for r in pair.history] == [(1, 1), (2, 1)]
    metrics = experiments.training_metrics(pair)
    assert metrics["epochs"] == 1  # epochs of training, not records
    assert metrics["val_accuracy"] == pair.extra["val_accuracy"]  # the ensemble's, not the last member's
    assert experiments.history_table(pair.history).index.names == ["member", "epoch"]
    figure = plots.training_curves(pair.history)
    loss_ax = figure.axes[0]
    assert len(loss_ax.lines) == 3 * 2  # train, train measured as validation, validation: per member
    (legend,) = figure.legends  # one legend for both plots: a colour per split, a marker per member
    assert {"validation", "member 1", "member 2"} <= {text.get_text() for text in legend.get_texts()}


def test_an_ensemble_saves_reloads_and_serves_the_same_answers(pair, tmp_path, mnist_test):
    directory = save_training(pair, tmp_path / "ens", {"data_checksum": "abc"})
    loaded = load_model(directory)
    assert isinstance(loaded.model, Ensemble) and loaded.metadata["arch_params"] == {"members": 2}
    images = mnist_test.images[:300]
    torch_p, _ = loaded.predict(images)
    assert torch.allclose(torch_p, pair.as_loaded().predict(images)[0], atol=1e-6)
    served, _ = load_onnx_model(directory).predict(images.numpy())
    assert (torch.as_tensor(served).argmax(1) == torch_p.argmax(1)).all()
    assert torch.allclose(torch.as_tensor(served), torch_p, atol=1e-4)


def test_an_ensemble_is_fine_tuned_whole_and_never_grown_from_one(pair, split, tmp_path):
    directory = save_training(pair, tmp_path / "base", {})
    tuned = train(small_config(init_from=str(directory), train_subset=500, schedule="cosine"), *split, progress=False)
    assert isinstance(tuned.model, Ensemble) and len(tuned.model.members) == 2
    with pytest.raises(ValueError, match="members must be 1"):
        train(small_config(init_from=str(directory), members=2), *split, progress=False)
    with pytest.raises(ValueError, match="at least 1"):
        train(small_config(members=0), *split, progress=False)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "digitlib", *args], capture_output=True, text=True, timeout=600)


def test_cli_joins_saved_runs_and_refuses_runs_that_saw_the_validation_images(mnist_train, tmp_path):
    train_digits, val_digits = train_val_split(mnist_train, 5000)  # the CLI's split
    runs = []
    for seed in (0, 1):
        result = train(small_config(seed=seed, val_size=5000), train_digits, val_digits, progress=False)
        runs.append(save_training(result, tmp_path / f"seed{seed}", {}))
    out = tmp_path / "joined"
    done = run_cli("ensemble", *map(str, runs), "--out", str(out), "--no-test", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["members"] == 2 and 0.5 < summary["val_accuracy"] <= 1
    joined = load_model(out)
    assert [m["seed"] for m in joined.metadata["members"]] == [0, 1]
    assert [m["path"] for m in joined.metadata["members"]] == [str(r) for r in runs]
    assert joined.metadata["training"]["members"] == 2 and "rejection" in joined.metadata

    other = save_training(train(small_config(val_size=0), train_digits, progress=False), tmp_path / "no-val", {})
    done = run_cli("ensemble", str(runs[0]), str(other), "--out", str(tmp_path / "bad"), "--no-test")
    assert done.returncode != 0 and "validation images" in done.stderr
    assert not (tmp_path / "bad").exists()
    done = run_cli("ensemble", str(runs[0]), "--out", str(tmp_path / "one"), "--no-test")
    assert done.returncode != 0 and "at least two" in done.stderr
