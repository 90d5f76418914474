"""The ONNX serving file: written with every saved model, checked against torch, verified on load."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from digitlib import config
from digitlib.modeling import export
from digitlib.modeling.checkpoint import load_model, save_model
from digitlib.modeling.models import build_model
from digitlib.serving import CheckpointError, load_onnx_model

CHECK = 200  # random test weights: the first images of each set are enough to catch a wrong graph


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    return save_model(build_model("seed"), tmp_path / "m", {"arch": "seed", "arch_params": {}}, onnx_check_limit=CHECK)


def test_save_model_writes_a_checked_onnx_file_with_its_metadata(saved):
    meta = json.loads((saved / "metadata.json").read_text())
    entry = meta["onnx"]
    assert (saved / "model.onnx").is_file() and entry["file"] == "model.onnx"
    assert (
        entry["opset"] >= 17
        and entry["onnxruntime_version"]
        and entry["source_weights_sha256"] == meta["weights_sha256"]
    )
    assert {name: figures["n"] for name, figures in entry["checked"].items()} == {
        "mnist_test": CHECK,
        "pen_digits": CHECK,
    }
    assert all(f["max_probability_difference"] <= 1e-4 for f in entry["checked"].values())


def test_the_graph_takes_uint8_images_of_any_batch_and_gives_logits_and_probabilities(saved):
    graph = onnx.load(str(saved / "model.onnx"))
    assert [o.name for o in graph.graph.output] == ["logits", "probabilities", "not_digit"]
    [images] = graph.graph.input
    assert images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    temperature = next(i for i in graph.graph.initializer if i.name == "temperature")
    assert onnx.numpy_helper.to_array(temperature) == 1.0  # later calibration changes it, no retraining

    served, torch_model = load_onnx_model(saved), load_model(saved)
    rng = np.random.default_rng(0)
    for n in (1, 7):
        batch = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        got = served.predict_proba(batch)
        assert got.shape == (n, 10) and np.allclose(got.sum(1), 1, atol=1e-5)
        assert np.abs(got - torch_model.predict_proba(batch).numpy()).max() <= 1e-4
        logits = served.logits(batch)
        assert np.allclose(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), got, atol=1e-5)
    assert served.version == torch_model.version


def test_an_export_that_differs_from_torch_is_refused_and_the_old_file_kept(saved, monkeypatch):
    before = (saved / "model.onnx").read_bytes()
    real_export = export.export_graph

    def wrong_weights(model, normalisation, path):
        torch.manual_seed(99)
        real_export(build_model("seed").eval(), normalisation, path)

    monkeypatch.setattr(export, "export_graph", wrong_weights)
    with pytest.raises(export.ExportError, match="predicted classes differ from torch"):
        export.export_onnx(saved, check_limit=CHECK)
    assert (saved / "model.onnx").read_bytes() == before
    assert [p.name for p in saved.iterdir() if p.name.endswith(".tmp")] == []
    load_onnx_model(saved)  # still the checked file, still loadable


def test_an_altered_onnx_file_fails_its_checksum(saved):
    data = bytearray((saved / "model.onnx").read_bytes())
    data[-100] ^= 0xFF
    (saved / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum does not match"):
        load_onnx_model(saved)


def test_a_directory_without_onnx_names_the_command_that_writes_it(saved):
    (saved / "model.onnx").unlink()
    with pytest.raises(CheckpointError, match=f"digitlib export-onnx --model {saved}"):
        load_onnx_model(saved)


def test_cli_export_onnx_writes_the_file_for_an_existing_directory(saved):
    (saved / "model.onnx").unlink()
    done = subprocess.run(
        [sys.executable, "-m", "digitlib", "export-onnx", "--model", str(saved), "--check-limit", "100", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["checked"] == {"mnist_test": 100, "pen_digits": 100}
    assert result["sha256"] == json.loads((saved / "metadata.json").read_text())["onnx"]["sha256"]
    assert load_onnx_model(saved).predict_proba(np.zeros((28, 28), np.uint8)).shape == (1, 10)


def test_the_check_limit_setting_applies_when_no_limit_is_given(saved, monkeypatch):
    monkeypatch.setenv(config.ONNX_CHECK.name, "50")
    entry = export.export_onnx(saved)
    assert {f["n"] for f in entry["checked"].values()} == {50}


def test_the_committed_default_model_has_a_checked_onnx_file():
    directory = config.DEFAULT_MODEL_DIR
    meta = json.loads((directory / "metadata.json").read_text())
    entry = meta["onnx"]
    # Checked on the whole of both sets when it was written, and the .pt left as it was.
    assert entry["checked"]["mnist_test"]["n"] == 10_000 and entry["checked"]["pen_digits"]["n"] == 4657
    assert entry["source_weights_sha256"] == meta["weights_sha256"]
    served = load_onnx_model(directory)  # verifies the SHA-256 of model.onnx
    images = export.check_sets(500)["mnist_test"]
    expected = load_model(directory).predict_proba(images).numpy()
    got = served.predict_proba(images)
    assert np.array_equal(got.argmax(1), expected.argmax(1)) and np.abs(got - expected).max() <= 1e-4
