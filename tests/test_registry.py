"""The model registry: versions, the atomic current pointer, the promotion rule, rollback, hot swap."""

from __future__ import annotations

import json
import os

import pytest
import torch

from digitlib import cli, config, registry
from digitlib.modeling.checkpoint import load_model, save_model
from digitlib.modeling.models import build_model
from digitlib.registry import LiveModel, RegistryError, decide


def make_version(models_dir, name, seed=0):
    """A model directory with random weights: the registry only needs it to exist and load."""
    torch.manual_seed(seed)
    save_model(build_model("seed"), models_dir / name, {"arch": "seed", "arch_params": {}})
    return models_dir / name


def passing_comparison(against="default"):
    decision = decide({"feedback_holdout": 0.9, "mnist_test": 0.98}, {"feedback_holdout": 0.8, "mnist_test": 0.98})
    return {"against": against, "decision": decision.to_dict()}


@pytest.fixture
def models(tmp_path, monkeypatch):
    """A registry with a base version (default) and one candidate that passed the rule."""
    monkeypatch.setattr(config, "MODELS_DIR", tmp_path)
    monkeypatch.delenv(config.MODEL_DIR.name, raising=False)
    make_version(tmp_path, "default")
    make_version(tmp_path, "cand", seed=1)
    registry.register("cand", parent="default", metrics={"mnist_test": 0.98}, comparison=passing_comparison())
    return tmp_path


# --- the promotion rule -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        ({"feedback_holdout": 0.90, "mnist_test": 0.990}, True),  # better on feedback, MNIST same
        ({"feedback_holdout": 0.90, "mnist_test": 0.989}, True),  # MNIST lost, within tolerance
        ({"feedback_holdout": 0.90, "mnist_test": 0.985}, False),  # MNIST lost beyond tolerance
        ({"feedback_holdout": 0.80, "mnist_test": 0.995}, False),  # not better on feedback
        ({"feedback_holdout": 0.79, "mnist_test": 0.995}, False),  # worse on feedback
    ],
)
def test_promotion_rule(candidate, expected):
    current = {"feedback_holdout": 0.80, "mnist_test": 0.990}
    decision = decide(candidate, current, tolerance=0.002)
    assert decision.promote is expected
    assert decision.reason.startswith("promoted" if expected else "refused")
    assert decision.feedback_gain == pytest.approx(candidate["feedback_holdout"] - 0.80)


def test_promotion_rule_needs_both_figures():
    with pytest.raises(ValueError, match="mnist_test"):
        decide({"feedback_holdout": 0.9}, {"feedback_holdout": 0.8, "mnist_test": 0.9})


# --- pointer, promotion, rollback ---------------------------------------------------------------


def test_without_a_pointer_the_base_version_is_current(models):
    assert registry.read_pointer(models).current == "default"
    assert registry.current_model_dir(models) == models / "default"
    assert config.MODEL_DIR.get() == str(models / "default")
    assert not registry.pointer_path(models).exists()


def test_promote_moves_the_pointer_and_the_default_model(models):
    pointer = registry.promote("cand", models)
    assert pointer.current == "cand" and pointer.history == ("default", "cand")
    assert json.loads(registry.pointer_path(models).read_text())["current"] == "cand"
    assert config.MODEL_DIR.get() == str(models / "cand")
    assert load_model().path == models / "cand"  # what every command now loads by default
    assert [p.name for p in models.iterdir() if p.name.endswith(".tmp")] == []


def test_the_setting_still_pins_a_model(models, monkeypatch):
    registry.promote("cand", models)
    monkeypatch.setenv(config.MODEL_DIR.name, str(models / "default"))
    assert config.MODEL_DIR.get() == str(models / "default")


def test_a_failed_pointer_write_leaves_the_old_pointer_whole(models, monkeypatch):
    registry.promote("cand", models)
    make_version(models, "other")
    registry.register("other", parent="cand", metrics={}, comparison=passing_comparison("cand"))

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        registry.promote("other", models)
    assert registry.read_pointer(models).current == "cand"


def test_rollback_goes_back_one_promotion(models):
    registry.promote("cand", models)
    pointer = registry.rollback(models)
    assert pointer.current == "default" and pointer.history == ("default",)
    assert config.MODEL_DIR.get() == str(models / "default")
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback(models)


@pytest.mark.parametrize(
    ("comparison", "message"),
    [
        (None, "no recorded comparison"),
        (passing_comparison(against="someone-else"), "was compared with 'someone-else'"),
        ({"against": "default", "decision": decide({"feedback_holdout": 0.1, "mnist_test": 1}, {"feedback_holdout": 0.2,
          "mnist_test": 1}).to_dict()}, "did not pass the promotion rule"),
    ],
)  # fmt: skip
def test_promote_refuses_a_candidate_the_rule_did_not_pass(models, comparison, message):
    registry.register("cand", parent="default", metrics={}, comparison=comparison)
    with pytest.raises(RegistryError, match=message):
        registry.promote("cand", models)
    assert registry.read_pointer(models).current == "default"
    assert registry.promote("cand", models, force=True).current == "cand"


def test_promote_refuses_weights_that_changed_after_the_comparison(models):
    make_version(models, "cand", seed=2)  # trained again into the same directory, not compared
    with pytest.raises(RegistryError, match="other weights than the ones compared"):
        registry.promote("cand")
    assert registry.promote("cand", force=True).current == "cand"


def test_a_version_registered_before_hashes_were_kept_can_be_promoted(models):
    record_file = models / "cand" / registry.RECORD_FILE
    record = json.loads(record_file.read_text())
    del record["weights_sha256"]
    record_file.write_text(json.dumps(record))
    assert registry.promote("cand").current == "cand"


def test_promote_refuses_unknown_and_current_versions(models):
    with pytest.raises(RegistryError, match="no model version 'ghost'"):
        registry.promote("ghost", models)
    with pytest.raises(RegistryError, match="already the current version"):
        registry.promote("default", models)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "corrupt model pointer"),
        ('{"current": "cand"}', "corrupt model pointer"),
        ('{"current": "cand", "history": ["default"]}', "history does not end with current"),
        ('{"current": "gone", "history": ["default", "gone"]}', "points at 'gone'"),
    ],
)
def test_a_corrupt_pointer_is_a_clear_error(models, content, message):
    registry.pointer_path(models).write_text(content)
    with pytest.raises(RegistryError, match=message) as error:
        config.MODEL_DIR.get()
    assert str(registry.pointer_path(models)) in str(error.value)


def test_versions_are_listed_with_their_records(models):
    registry.promote("cand", models)
    rows = {row["name"]: row for row in registry.list_versions(models)}
    assert set(rows) == {"default", "cand"}
    assert rows["cand"]["current"] and not rows["default"]["current"]
    assert rows["cand"]["parent"] == "default" and rows["cand"]["metrics"] == {"mnist_test": 0.98}


# --- command line --------------------------------------------------------------------------------


def test_cli_promote_models_rollback(models, capsys):
    assert cli.main(["promote", "cand", "--models-dir", str(models), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["current"] == "cand"
    assert cli.main(["models", "--models-dir", str(models), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert listed["cand"].startswith("* ") and not listed["default"].startswith("*")
    assert cli.main(["rollback", "--models-dir", str(models), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["current"] == "default"
    assert cli.main(["rollback", "--models-dir", str(models)]) == 2
    assert "nothing to roll back" in capsys.readouterr().err


# --- hot swap --------------------------------------------------------------------------------------


def test_live_model_follows_promotion_and_rollback(models):
    live = LiveModel(models)
    base_version = live.get().version
    assert live.get() is live.get()  # nothing changed: no reload
    registry.promote("cand", models)
    assert live.get().version == registry.version_record("cand", models)["version"] != base_version
    registry.rollback(models)
    assert live.get().version == base_version


def test_live_model_keeps_serving_when_the_pointer_breaks(models):
    live = LiveModel(models)
    before = live.get()
    registry.pointer_path(models).write_text("{broken")
    assert live.get() is before


def test_corrupt_version_record_is_a_clear_error(tmp_path):
    from digitlib.modeling.checkpoint import save_model
    from digitlib.modeling.models import build_model
    from digitlib.registry import RegistryError, version_record

    save_model(build_model("seed"), tmp_path / "v1", {"arch": "seed", "arch_params": {}})
    (tmp_path / "v1" / "registry.json").write_text("{not json")
    with pytest.raises(RegistryError, match=r"registry.json: unreadable version record"):
        version_record("v1", tmp_path)
