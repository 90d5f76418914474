"""Calibrated probabilities and "not a digit": the same figures from torch and from the served ONNX graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from digitlib.modeling.checkpoint import build_for, load_model, save_model
from digitlib.serving import load_onnx_model

CHECK = 200
CALIBRATION = {"temperature": 0.7, "not_digit": {"scale": 1.5, "bias": -0.4}}


@pytest.fixture(scope="module")
def eleven(tmp_path_factory):
    """A random 11-output model saved with a calibration and an operating point."""
    torch.manual_seed(0)
    meta = {
        "arch": "seed",
        "arch_params": {},
        "outputs": 11,
        "calibration": CALIBRATION,
        "rejection": {"threshold": 0.5},
    }
    return save_model(build_for("seed", {}, 11), tmp_path_factory.mktemp("m") / "m", meta, onnx_check_limit=CHECK)


def images(n=64, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def test_served_and_torch_give_the_same_calibrated_probabilities_and_not_digit(eleven):
    served, torch_model = load_onnx_model(eleven), load_model(eleven)
    x = images()
    probabilities, not_digit = served.predict(x)
    expected, expected_nd = torch_model.predict(x)
    assert probabilities.shape == (64, 10) and not_digit.shape == (64,) and not_digit.dtype == np.float32
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert np.abs(probabilities - expected.numpy()).max() <= 1e-4
    assert np.abs(not_digit - expected_nd.numpy()).max() <= 1e-4
    assert np.array_equal(served.predict_proba(x), probabilities)
    # The calibration is applied: temperature on the ten digit logits, Platt scaling on the not-digit log-odds.
    logits = torch_model.logits(x)
    assert torch.allclose(expected, torch.softmax(logits[:, :10] / 0.7, 1), atol=1e-6)
    odds = logits[:, 10] - torch.logsumexp(logits[:, :10], 1)
    assert torch.allclose(expected_nd, torch.sigmoid(1.5 * odds - 0.4), atol=1e-6)


def test_the_operating_point_comes_from_the_metadata_on_both_sides(eleven):
    served, torch_model = load_onnx_model(eleven), load_model(eleven)
    assert served.rejection_threshold == torch_model.rejection_threshold == 0.5
    values = np.array([0.1, 0.5, 0.9], np.float32)
    assert served.is_not_digit(values).tolist() == [False, True, True]
    assert torch_model.is_not_digit(torch.from_numpy(values)).tolist() == [False, True, True]


def test_a_ten_output_model_never_says_not_a_digit(tmp_path):
    torch.manual_seed(0)
    directory = save_model(
        build_for("seed", {}), tmp_path / "m", {"arch": "seed", "arch_params": {}}, onnx_check_limit=CHECK
    )
    served = load_onnx_model(directory)
    probabilities, not_digit = served.predict(images(8))
    assert probabilities.shape == (8, 10) and not not_digit.any()
    assert served.rejection_threshold is None and not served.is_not_digit(np.ones(8)).any()
