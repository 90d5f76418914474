"""The retrain pipeline (digitlib.retrain): the recipe's steps, the comparison and its decision, one whole retrain."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import save_untrained_model

from digitlib import config, registry, retrain
from digitlib.dataset import Digits
from digitlib.drawings import drawings_to_digits, load_drawings
from digitlib.modeling.checkpoint import CheckpointError, load_model
from digitlib.modeling.train import TrainConfig, train
from digitlib.simulate import submit_drawings
from digitlib.store import FeedbackStore


def digits(n, label):
    return Digits(torch.full((n, 28, 28), label, dtype=torch.uint8), torch.full((n,), label, dtype=torch.long))


# --- the steps ------------------------------------------------------------------------------------


def test_training_mix_oversamples_the_feedback():
    mix = retrain.training_mix(digits(100, 0), digits(3, 5), mnist_subset=40, oversample=4)
    assert len(mix) == 52 and int((mix.labels == 5).sum()) == 12
    assert len(retrain.training_mix(digits(100, 0), digits(3, 5), None, 0)) == 100
    with pytest.raises(ValueError, match="oversample"):
        retrain.training_mix(digits(1, 0), digits(1, 1), oversample=-1)


@pytest.mark.slow  # trains (a learning rate of 0: a few steps, but steps)
def test_fine_tuning_starts_from_the_base_weights(tmp_path):
    base = load_model(save_untrained_model(tmp_path / "base", seed=3))
    cfg = retrain.fine_tune_config(base, epochs=1, lr=0.0, schedule="constant", augment="none", threads=1)
    assert cfg.arch == "seed" and cfg.init_from == str(tmp_path / "base") and cfg.negatives == 0.0  # 10 outputs
    result = train(cfg, digits(64, 3), None, progress=False)
    # Learning rate 0: the model is exactly the one it started from (no BatchNorm in `seed`).
    for name, tensor in base.model.state_dict().items():
        assert torch.equal(result.model.state_dict()[name], tensor), name


def test_fine_tuning_refuses_another_architecture(tmp_path):
    save_untrained_model(tmp_path / "base")
    cfg = TrainConfig(arch="vggbn", init_from=str(tmp_path / "base"), epochs=1, val_size=0)
    with pytest.raises(CheckpointError, match="not 'vggbn'"):
        train(cfg, digits(8, 1), None, progress=False)


def test_compare_models_side_by_side(tmp_path):
    model = load_model(save_untrained_model(tmp_path / "m"))
    table = retrain.compare_models({"current": model, "candidate": model}, {"a": digits(5, 2), "b": digits(7, 4)})
    assert list(table.index) == ["a", "b"] and table.loc["b", "n"] == 7
    assert (table["current"] == table["candidate"]).all() and table["current"].between(0, 1).all()


def test_the_comparison_is_decided_by_the_rule_on_the_gate_sets(tmp_path):
    current = load_model(save_untrained_model(tmp_path / "current", seed=0))
    candidate = load_model(save_untrained_model(tmp_path / "candidate", seed=1))
    sets = {k: digits(20, i) for i, k in enumerate(("mnist_test", "feedback_holdout", "mnist_validation", "drawings"))}
    sets["unseen"] = digits(9, 8)  # reported beside the others, not judged
    known = {"mnist_validation": 0.25, "drawings": 0.5}  # measured before: taken as they are
    comparison = retrain.compare(current, candidate, sets, against="current", tolerance=0.01, current_accuracy=known)
    table = comparison.table
    assert list(table.columns) == ["n", "current", "candidate"] and list(table.index) == list(sets)
    assert table.loc["mnist_validation", "current"] == 0.25 and table.loc["drawings", "current"] == 0.5
    measured = retrain.compare_models({"current": current}, {"unseen": sets["unseen"]})
    assert table.loc["unseen", "current"] == measured.loc["unseen", "current"]
    gate = ("feedback_holdout", "mnist_test", "mnist_validation", "drawings")
    expected = registry.decide(*({k: table.loc[k, who] for k in gate} for who in ("candidate", "current")), 0.01)
    assert comparison.decision == expected
    record = comparison.record()
    assert record["against"] == "current" and record["decision"] == expected.to_dict()
    assert set(record["table"]) == {"n", "current", "candidate"}


def test_without_the_pen_digit_set_the_rule_refuses_naming_it(tmp_path):
    model = load_model(save_untrained_model(tmp_path / "m"))
    sets = {k: digits(5, 1) for k in ("mnist_test", "feedback_holdout", "mnist_validation")}
    decision = retrain.compare(model, model, sets, against="default").decision
    assert not decision.promote and "pen-digit dev set" in decision.reason


# --- one whole retrain ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_retrain_registers_its_candidate_with_the_record_and_promotes_by_the_rule(tmp_path, mnist_dir):
    drawings = load_drawings(config.DRAWINGS_FILE.get())
    visitors = [d for d in drawings if d.source == "app"][:60]
    others = [d for d in drawings if d.source != "app"][:80]
    models = tmp_path / "models"
    save_untrained_model(models / "default")
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = FeedbackStore(url, queue_file=tmp_path / "queue.jsonl")
    assert submit_drawings(store, load_model(models / "default"), visitors) == 60
    store.dispose()
    data = retrain.reference_data(mnist_dir, mnist_test_size=300, mnist_validation_size=300,
                                  drawings=drawings_to_digits(others))  # fmt: skip
    # An untrained judge would suspect labels at random: this test is about the pipeline, not the checks.
    settings = retrain.RetrainSettings(oversample=2, mnist_subset=600, epochs=1, lr=1e-3, augment="none",
                                       check_labels=False, device="cpu")  # fmt: skip

    run = retrain.retrain(url, tmp_path / "export", data, settings, models_dir=models, name="cand", progress=False)

    assert run.parent == "default" and run.manifest["exported"] == 60 and not run.manifest["label_checks"]["checked"]
    assert run.mix_size == 600 + 2 * len(run.export.train)
    table, decision = run.comparison.table, run.comparison.decision
    assert list(table.index) == ["mnist_test", "feedback_holdout", "mnist_validation", "drawings"]
    assert table.loc["mnist_test", "n"] == 300 and table.loc["drawings", "n"] == 80
    assert decision == registry.decide(table["candidate"].to_dict(), table["current"].to_dict(), 0.002)
    # the record promotion reads, written beside the weights
    record = registry.version_record("cand", models)
    assert record["parent"] == "default" and record["comparison"] == json.loads(json.dumps(run.comparison.record()))
    assert record["data_manifest"]["exported"] == 60
    assert record["metrics"]["feedback_holdout"] == table.loc["feedback_holdout", "candidate"]
    assert run.promoted == decision.promote == (registry.read_pointer(models).current == "cand")
    report = run.report()
    assert report["candidate"] == "cand" and report["promoted"] == run.promoted and report["settings"]["epochs"] == 1
    if not run.promoted:  # the rule said no: forcing it is the only way, and the record says why
        with pytest.raises(registry.RegistryError, match="did not pass the promotion rule"):
            registry.promote("cand", models)

    # Without registering: models/ stays as it was, the candidate lives in memory.
    shutil.rmtree(tmp_path / "export")
    before = sorted(p.name for p in models.iterdir())
    kept = retrain.retrain(url, tmp_path / "export", data, settings, models_dir=models, name="mem", register=False,
                           progress=False)  # fmt: skip
    assert sorted(p.name for p in models.iterdir()) == before and not kept.registered and not kept.promoted
    assert kept.candidate.path is None and kept.comparison.against == registry.read_pointer(models).current
