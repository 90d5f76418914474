"""The whole loop at small scale: visitors draw, feedback is exported, a candidate is fine-tuned,
compared and promoted by the rule, and an open dashboard session switches to it without a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dashboard_driver import draw

from digitlib import cli, config, experiments, registry
from digitlib.dashboard import Dashboard, build_dashboard
from digitlib.drawings import load_drawings
from digitlib.feedback import load_feedback
from digitlib.modeling.checkpoint import load_model
from digitlib.modeling.train import TrainConfig, save_training, train
from digitlib.registry import LiveModel
from digitlib.simulate import submit_drawings
from digitlib.store import FeedbackStore

RETRAIN_NOTEBOOK = config.NOTEBOOKS_DIR / "4.0-dl-retrain-with-feedback.ipynb"
ANALYSE_NOTEBOOK = config.NOTEBOOKS_DIR / "3.0-dl-analyse-feedback.ipynb"
FEEDBACK_SITES = ("app", "ced", "gmd")  # visitors; the other sites are the drawn-digits dev set here
PER_SITE = 80
REPLAYS = 10


def drawings_by_site():
    path = Path(config.DRAWINGS_FILE.get())
    if not path.is_file():
        pytest.skip(f"drawn digits not found at {path}")
    drawings = load_drawings(path)
    visitors = [d for site in FEEDBACK_SITES for d in [d for d in drawings if d.source == site][:PER_SITE]]
    others = [d for d in drawings if d.source not in FEEDBACK_SITES][:300]
    return visitors, others


def widget_texts(widget) -> list[str]:
    """Every HTML text in a widget tree (the page's version line among them)."""
    own = [widget.value] if isinstance(getattr(widget, "value", None), str) else []
    return own + [t for child in getattr(widget, "children", ()) for t in widget_texts(child)]


@pytest.fixture
def models(tmp_path, monkeypatch, mnist_train):
    """A registry whose base version is a small vggbn model trained for a few seconds."""
    root = tmp_path / "models"
    monkeypatch.setattr(config, "MODELS_DIR", root)
    monkeypatch.delenv(config.MODEL_DIR.name, raising=False)
    cfg = TrainConfig(arch="vggbn", epochs=1, train_subset=3000, augment="none", val_size=0, threads=2)
    save_training(train(cfg, mnist_train, None, progress=False), root / "default")
    return root


@pytest.mark.slow
def test_feedback_loop_end_to_end(models, tmp_path, capsys):
    torch.set_num_threads(1)  # one drawing at a time, as the dashboard predicts
    visitors, others = drawings_by_site()
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = FeedbackStore(url, queue_file=tmp_path / "queue.jsonl")
    session = Dashboard(LiveModel(models), store)  # a visitor's page, open throughout
    base_version = session.model.version

    # 1. Visitors draw and answer; some drawings are replayed under new submission ids.
    assert submit_drawings(store, load_model(models / "default"), visitors) == len(visitors)
    assert submit_drawings(store, load_model(models / "default"), visitors[:REPLAYS]) == REPLAYS
    frame = load_feedback(url)
    assert len(frame) == len(visitors) + REPLAYS and set(frame["model_version"]) == {base_version}

    # 2. Export through the command line.
    export_dir = tmp_path / "export"
    assert cli.main(["export-feedback", str(export_dir), "--database-url", url, "--json"]) == 0
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert manifest["exported"] == len(visitors) and manifest["dropped"]["duplicates"] == REPLAYS
    capsys.readouterr()

    # 3. Retrain briefly, evaluate side by side, promote or refuse by the rule (the notebook does it all).
    dev_set = tmp_path / "dev.jsonl"
    dev_set.write_text("".join(json.dumps(d.__dict__) + "\n" for d in others))
    params = {
        "database_url": url, "export_dir": str(export_dir), "models_dir": str(models), "run_name": "candidate",
        "drawings_file": str(dev_set), "figures_dir": str(tmp_path / "figures"), "mnist_subset": 2000,
        "mnist_test_size": 2000, "epochs": 1, "oversample": 4, "augment": "none", "lr": 1e-3,
    }  # fmt: skip
    run = experiments.run_notebook(RETRAIN_NOTEBOOK, tmp_path / "retrain.ipynb", params, html=False, timeout=300)
    assert run.status == "ok", run.error
    report = json.loads((tmp_path / "figures" / "candidate" / "retrain.json").read_text())
    candidate, current = report["table"]["candidate"], report["table"]["current"]
    assert registry.decide(candidate, current, 0.002).to_dict() == report["decision"]
    assert report["decision"]["promote"], report["decision"]["reason"]  # feedback helps a weak base model
    assert registry.read_pointer(models).current == "candidate"
    record = registry.version_record("candidate", models)
    assert record["parent"] == "default" and record["data_manifest"]["exported"] == len(visitors)
    assert record["metrics"]["feedback_holdout"] == candidate["feedback_holdout"]

    # 4. The open session now predicts with the promoted model, and its rows say so.
    candidate_version = record["version"]
    draw(session, others[0].strokes)
    assert session.prediction.model_version == candidate_version
    assert candidate_version in session.version_label.value
    assert session.submit(others[0].label) == "saved"
    assert load_feedback(url)["model_version"].iloc[-1] == candidate_version
    # A new session starts with it too.
    fresh = build_dashboard(database_url=url)
    assert any(candidate_version in text for text in widget_texts(fresh))

    # 5. One command rolls back, and the open session follows.
    assert cli.main(["rollback", "--models-dir", str(models)]) == 0
    draw(session, others[1].strokes)
    assert session.prediction.model_version == base_version
    store.dispose()


@pytest.mark.slow
def test_analyse_notebook_on_an_empty_database_says_so(tmp_path):
    params = {"database_url": f"sqlite:///{tmp_path / 'empty.db'}", "figures_dir": str(tmp_path), "name": "x"}
    run = experiments.run_notebook(ANALYSE_NOTEBOOK, tmp_path / "analyse.ipynb", params, html=False, timeout=120)
    assert run.status == "ok", run.error
    assert json.loads((tmp_path / "x" / "analysis.json").read_text())["n"] == 0
    assert "holds no feedback yet" in (tmp_path / "analyse.ipynb").read_text()
    assert not list((tmp_path / "x").glob("*.png"))
