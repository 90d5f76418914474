"""The model registry: versions, the atomic current pointer, the promotion rule, rollback, hot swap."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from digitlib import cli, config, registry
from digitlib.modeling.checkpoint import CheckpointError, load_model, save_model
from digitlib.modeling.models import build_model
from digitlib.registry import LiveModel, RegistryError, decide
from digitlib.serving import OnnxModel

CHECK = 200  # ONNX export checked on the first images of each set: random test weights, seconds not minutes


_SAVED: dict[tuple[str, int], Path] = {}


def make_version(models_dir, name, seed=0):
    """A model directory with random weights: the registry only needs it to exist and load.

    Each (name, seed) is saved (and its ONNX export checked) once per test run, then copied.
    """
    if (name, seed) not in _SAVED:
        torch.manual_seed(seed)
        saved = Path(tempfile.mkdtemp(prefix="registry-version-")) / name
        save_model(build_model("seed"), saved, {"arch": "seed", "arch_params": {}}, onnx_check_limit=CHECK)
        _SAVED[name, seed] = saved
    shutil.copytree(_SAVED[name, seed], models_dir / name, dirs_exist_ok=True)
    return models_dir / name


TRUSTED = {"mnist_validation": 0.985, "drawings": 0.90}  # the same for both: nothing lost on trusted data


def passing_comparison(against="default"):
    decision = decide(
        {"feedback_holdout": 0.9, "mnist_test": 0.98, **TRUSTED},
        {"feedback_holdout": 0.8, "mnist_test": 0.98, **TRUSTED},
    )
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
        ({"feedback_holdout": 0.99, "mnist_test": 0.990, "mnist_validation": 0.984}, True),  # within tolerance
        ({"feedback_holdout": 0.99, "mnist_test": 0.990, "mnist_validation": 0.980}, False),  # trusted MNIST lost
        ({"feedback_holdout": 0.99, "mnist_test": 0.990, "drawings": 0.85}, False),  # pen digits lost
    ],
)
def test_promotion_rule(candidate, expected):
    current = {"feedback_holdout": 0.80, "mnist_test": 0.990, **TRUSTED}
    decision = decide({**TRUSTED, **candidate}, current, tolerance=0.002)
    assert decision.promote is expected
    assert decision.reason.startswith("promoted" if expected else "refused")
    assert decision.feedback_gain == pytest.approx(candidate["feedback_holdout"] - 0.80)
    assert set(decision.to_dict()["trusted_changes"]) == {"mnist_validation", "drawings"}
    # the reason shows every figure the rule looked at
    assert all(w in decision.reason for w in ("feedback held-out", "MNIST test", "MNIST validation", "pen-digit"))


def test_a_big_feedback_gain_does_not_buy_a_loss_on_trusted_data():
    current = {"feedback_holdout": 0.50, "mnist_test": 0.99, **TRUSTED}
    poisoned = {"feedback_holdout": 1.00, "mnist_test": 0.99, "mnist_validation": 0.985, "drawings": 0.80}
    decision = decide(poisoned, current)
    assert not decision.promote and "worse on trusted data beyond the tolerance (pen-digit dev set)" in decision.reason
    assert decision.trusted_changes["drawings"] == pytest.approx(-0.10)


def test_without_trusted_figures_the_rule_refuses_and_names_them():
    decision = decide({"feedback_holdout": 0.9, "mnist_test": 0.99}, {"feedback_holdout": 0.8, "mnist_test": 0.99})
    assert not decision.promote
    assert "no figures on trusted data (MNIST validation split, pen-digit dev set)" in decision.reason


def test_promotion_rule_needs_both_figures():
    with pytest.raises(ValueError, match="mnist_test"):
        decide({"feedback_holdout": 0.9}, {"feedback_holdout": 0.8, "mnist_test": 0.9})


# --- pointer, promotion, rollback ---------------------------------------------------------------


def test_without_a_pointer_the_base_version_is_current(models):
    assert registry.read_pointer(models).current == "default"
    assert registry.current_model_dir(models) == models / "default"
    assert str(registry.resolve_model_dir()) == str(models / "default")
    assert not registry.pointer_path(models).exists()


def test_promote_moves_the_pointer_and_the_default_model(models):
    pointer = registry.promote("cand", models)
    assert pointer.current == "cand" and pointer.history == ("default", "cand")
    assert json.loads(registry.pointer_path(models).read_text())["current"] == "cand"
    assert str(registry.resolve_model_dir()) == str(models / "cand")
    assert load_model().path == models / "cand"  # what every command now loads by default
    assert [p.name for p in models.iterdir() if p.name.endswith(".tmp")] == []


def test_the_setting_still_pins_a_model(models, monkeypatch):
    registry.promote("cand", models)
    monkeypatch.setenv(config.MODEL_DIR.name, str(models / "default"))
    assert str(registry.resolve_model_dir()) == str(models / "default")


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
    assert str(registry.resolve_model_dir()) == str(models / "default")
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback(models)


@pytest.mark.parametrize(
    ("comparison", "message"),
    [
        (None, "no recorded comparison"),
        (passing_comparison(against="someone-else"), "was compared with 'someone-else'"),
        ({"against": "default", "decision": decide({"feedback_holdout": 0.1, "mnist_test": 1, **TRUSTED},
          {"feedback_holdout": 0.2, "mnist_test": 1, **TRUSTED}).to_dict()}, "did not pass the promotion rule"),
    ],
)  # fmt: skip
def test_promote_refuses_a_candidate_the_rule_did_not_pass(models, comparison, message):
    registry.register("cand", parent="default", metrics={}, comparison=comparison)
    with pytest.raises(RegistryError, match=message):
        registry.promote("cand", models)
    assert registry.read_pointer(models).current == "default"
    assert registry.promote("cand", models, force=True).current == "cand"


def test_promote_refuses_a_comparison_recorded_before_the_trusted_gate(models, capsys):
    old = {
        "promote": True,
        "reason": "promoted: feedback held-out +10.00%",
        "feedback_gain": 0.1,
        "mnist_change": 0.0,
        "tolerance": 0.002,
    }  # a record written before trusted_changes existed
    registry.register("cand", parent="default", metrics={}, comparison={"against": "default", "decision": old})
    with pytest.raises(RegistryError, match="without figures on trusted data .MNIST validation split, pen-digit"):
        registry.promote("cand", models)
    assert cli.main(["promote", "cand", "--models-dir", str(models)]) == 2
    assert "recorded before the trusted-data gate" in capsys.readouterr().err
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
        registry.resolve_model_dir()
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

    save_model(build_model("seed"), tmp_path / "v1", {"arch": "seed", "arch_params": {}}, onnx_check_limit=CHECK)
    (tmp_path / "v1" / "registry.json").write_text("{not json")
    with pytest.raises(RegistryError, match=r"registry.json: unreadable version record"):
        version_record("v1", tmp_path)


def test_live_model_serves_the_versions_onnx_file(models):
    live = LiveModel(models)
    assert isinstance(live.get(), OnnxModel) and live.get().path == models / "default"
    assert live.get().predict_proba(torch.zeros(2, 28, 28, dtype=torch.uint8).numpy()).shape == (2, 10)


def test_register_writes_a_missing_onnx_file(models, monkeypatch):
    monkeypatch.setenv(config.ONNX_CHECK.name, str(CHECK))
    (models / "cand" / "model.onnx").unlink()
    record = registry.register("cand", parent="default", metrics={}, comparison=passing_comparison())
    meta = json.loads((models / "cand" / "metadata.json").read_text())
    assert (models / "cand" / "model.onnx").is_file() and record["onnx_sha256"] == meta["onnx"]["sha256"]


# --- confinement: versions are directories inside models/ -------------------------------------------


@pytest.fixture
def outside(tmp_path):
    """A loadable model outside the registry folder: what a hostile pointer would point at."""
    return make_version(tmp_path.parent / f"{tmp_path.name}-outside", "evil", seed=3)


@pytest.mark.parametrize("escape", ["../x", "../../x", "ABSOLUTE", ".", "a/../../x"])
def test_a_pointer_out_of_models_is_refused_and_sessions_keep_their_model(models, outside, escape):
    live = LiveModel(models)
    before = live.get()
    target = str(outside) if escape == "ABSOLUTE" else escape
    registry.pointer_path(models).write_text(json.dumps({"current": target, "history": ["default", target]}))
    with pytest.raises(RegistryError, match="not a version name") as error:
        registry.resolve_model_dir()
    assert str(registry.pointer_path(models)) in str(error.value)
    assert live.get() is before  # the open session keeps serving its model


def test_a_pointer_with_an_escaping_history_is_refused(models, outside):
    registry.pointer_path(models).write_text(json.dumps({"current": "default", "history": [str(outside), "default"]}))
    with pytest.raises(RegistryError, match="not a version name"):
        registry.read_pointer(models)


@pytest.mark.parametrize("name", ["ABSOLUTE", "../outside-evil", "..", ""])
def test_promote_refuses_paths_even_with_force(models, outside, name):
    name = str(outside) if name == "ABSOLUTE" else name
    with pytest.raises(RegistryError, match="not a version name"):
        registry.promote(name, models, force=True)
    assert registry.read_pointer(models).current == "default"


def test_cli_promote_of_an_absolute_path_is_one_line_exit_2(models, outside):
    done = subprocess.run(
        [sys.executable, "-m", "digitlib", "promote", str(outside), "--force", "--models-dir", str(models)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "not a version name" in done.stderr
    assert registry.read_pointer(models).current == "default"


# --- corrupt metadata, NaN weights -------------------------------------------------------------------


def test_corrupt_metadata_is_one_line_naming_the_file_exit_2(models):
    metadata = models / "cand" / "metadata.json"
    metadata.write_text('{"version": "cand-1", "weights_sha')
    for command in (["export-onnx", "--model", str(models / "cand")], ["promote", "cand", "--models-dir", str(models)]):
        done = subprocess.run([sys.executable, "-m", "digitlib", *command], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and str(metadata) in done.stderr
        assert "Traceback" not in done.stderr


def test_live_model_keeps_serving_when_the_new_version_is_corrupt(models):
    live = LiveModel(models)
    before = live.get()
    (models / "cand" / "metadata.json").write_text("{broken")
    registry.pointer_path(models).write_text(json.dumps({"current": "cand", "history": ["default", "cand"]}))
    assert live.get() is before


def test_nan_weights_are_refused_on_load_and_never_exported(models):
    state = torch.load(models / "cand" / "model.pt", weights_only=True)
    state["state_dict"]["0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, models / "cand" / "model.pt")
    (models / "cand" / "metadata.json").unlink()  # no recorded checksum: the NaN check itself must refuse
    with pytest.raises(CheckpointError, match="non-finite weights"):
        load_model(models / "cand")
    model = build_model("seed")
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite weights"):
        save_model(model, models / "nan", {"arch": "seed", "arch_params": {}}, onnx_check_limit=CHECK)
    assert not (models / "nan" / "model.onnx").exists()
