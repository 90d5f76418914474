"""Calibrated probabilities and "not a digit": the same figures from torch and from the served ONNX graph."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from digitlib import calibration, config
from digitlib.modeling.checkpoint import build_for, load_model, save_model
from digitlib.preprocess import strokes_to_input
from digitlib.serving import load_onnx_model

PEN = Path(config.DRAWINGS_FILE.get())
NON_DIGITS = config.SHARED_DATA_DIR / "non-digits" / "dev.jsonl"

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


def test_the_onnx_file_itself_records_the_calibration_and_the_operating_point(eleven):
    import onnx

    props = {p.key: json.loads(p.value) for p in onnx.load(str(eleven / "model.onnx")).metadata_props}
    assert props["rejection"]["threshold"] == 0.5
    assert props["calibration"] == CALIBRATION


def test_a_ten_output_model_never_says_not_a_digit(tmp_path):
    torch.manual_seed(0)
    directory = save_model(
        build_for("seed", {}), tmp_path / "m", {"arch": "seed", "arch_params": {}}, onnx_check_limit=CHECK
    )
    served = load_onnx_model(directory)
    probabilities, not_digit = served.predict(images(8))
    assert probabilities.shape == (8, 10) and not not_digit.any()
    assert served.rejection_threshold is None and not served.is_not_digit(np.ones(8)).any()


# --- fitting ---------------------------------------------------------------------------------


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_it_does_not():
    # 0.8 confident, right 4 times in 5: calibrated.
    p = np.tile([[0.8, 0.2]], (5, 1))
    assert calibration.ece(p, [0, 0, 0, 0, 1]) == pytest.approx(0.0)
    assert calibration.ece(p, [1, 1, 1, 1, 1]) == pytest.approx(0.8)
    # 15 equal-width bins: 0.5 and 0.9 confidences fall in different bins, each calibrated on its own.
    q = np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1]] + [[0.9, 0.1]] * 9)
    assert calibration.ece(q, [0, 1] + [0] * 9 + [1]) == pytest.approx(0.0, abs=1e-9)


def test_temperature_scaling_recovers_the_temperature_that_made_the_labels():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 10, generator=gen) * 4
    labels = torch.multinomial(torch.softmax(logits / 2.5, 1), 1, generator=gen).flatten()
    assert calibration.fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)


def test_platt_scaling_recovers_scale_and_bias():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(20000, generator=gen) * 3
    positive = torch.rand(20000, generator=gen) < torch.sigmoid(0.5 * scores - 1.0)
    scale, bias = calibration.fit_platt(scores, positive)
    assert scale == pytest.approx(0.5, abs=0.05) and bias == pytest.approx(-1.0, abs=0.1)


def test_the_operating_point_turns_away_at_most_the_given_share_of_digits():
    values = np.random.default_rng(0).random(1000)
    for rate in (0.0, 0.01, 0.2):
        threshold = calibration.operating_point(values, rate)
        assert (values >= threshold).mean() <= rate
        assert (values >= np.nextafter(threshold, -1) - 1e-3).mean() > rate or rate == 0.0


def test_the_rule_turns_away_at_most_its_share_of_pen_digits_and_never_goes_below_the_validation_point():
    rng = np.random.default_rng(0)
    pen = rng.random(2000)
    threshold = calibration.operating_point_rule(pen, 0.2, 0.01)
    assert threshold == calibration.operating_point(pen, 0.01) and (pen >= threshold).mean() <= 0.01
    # Validation digits that say "not a digit" more often than the pen digits set the floor.
    assert calibration.operating_point_rule(pen * 0.5, 0.7, 0.01) == 0.7


def test_leave_one_site_out_fits_on_the_other_sites_and_reports_mean_and_worst():
    rng = np.random.default_rng(1)
    # Site "b" writes digits the model finds odd: its threshold fitted on "a" and "c" turns many away.
    pen = np.concatenate([rng.random(500) * 0.5, 0.3 + rng.random(200) * 0.7, rng.random(300) * 0.5])
    sites = ["a"] * 500 + ["b"] * 200 + ["c"] * 300
    negatives = rng.random(400)
    judged = calibration.leave_one_site_out(pen, sites, 0.0, {"negatives": negatives}, rate=0.01)
    assert set(judged["sites"]) == {"a", "b", "c"}
    sites = np.array(sites)
    for site, fold in judged["sites"].items():
        expected = calibration.operating_point_rule(pen[sites != site], 0.0, 0.01)
        assert fold["threshold"] == expected and fold["n"] == (sites == site).sum()
        assert fold["digits"] == pytest.approx((pen[sites == site] >= expected).mean())
        assert fold["negatives"] == pytest.approx((negatives >= expected).mean())
    shares = [fold["digits"] for fold in judged["sites"].values()]
    assert judged["digits"]["worst"] == max(shares) == judged["sites"]["b"]["digits"] > 0.2
    assert judged["digits"]["mean"] == pytest.approx(np.mean(shares))
    assert judged["negatives"]["worst"] == min(fold["negatives"] for fold in judged["sites"].values())


def _eleven_logits(n, not_digit, seed):
    """Logits whose not-digit log-odds are `not_digit` (shifted by a per-row random amount) plus noise."""
    gen = torch.Generator().manual_seed(seed)
    digits = torch.randn(n, 10, generator=gen) * 3
    return torch.cat([digits, (torch.logsumexp(digits, 1) + not_digit + torch.randn(n, generator=gen)).unsqueeze(1)], 1)


def test_fit_sets_the_operating_point_on_the_pen_digits_and_records_rule_data_and_the_site_judgement():
    labels = torch.randint(0, 10, (600,), generator=torch.Generator().manual_seed(0))
    valid, negatives = _eleven_logits(600, -4.0, 1), _eleven_logits(500, 3.0, 2)
    hard, pen = _eleven_logits(600, -3.0, 3), _eleven_logits(900, -2.0, 4)
    sites = ["x"] * 300 + ["y"] * 300 + ["z"] * 300
    got = calibration.fit(valid, labels, negatives, hard, pen_digits=pen, pen_sites=sites)["rejection"]
    assert got["validation"]["pen_digits"] <= calibration.PEN_DIGIT_RATE and got["threshold"] >= got["floor"]
    assert "pen digits" in got["rule"] and got["chosen_on"].startswith("900 pen digits of 3 sites")
    assert set(got["leave_one_site_out"]["sites"]) == {"x", "y", "z"}
    assert 0 <= got["leave_one_site_out"]["digits"]["worst"] <= 1
    assert got["validation"]["generated_negatives"] > 0.5
    # Without pen digits: the validation rule alone, as before.
    old = calibration.fit(valid, labels, negatives, hard)["rejection"]
    assert old["chosen_on"] == "validation digits with the pen augmentation" and "leave_one_site_out" not in old
    assert old["validation"]["pen_augmented_digits"] <= calibration.DIGIT_REJECTION_RATE
    with pytest.raises(ValueError, match="site of every pen digit"):
        calibration.fit(valid, labels, negatives, hard, pen_digits=pen, pen_sites=sites[:10])


# --- the eval-drawings contract, as an outside check runs it ---------------------------------


def _eval_drawings(path, model):
    done = subprocess.run(
        [sys.executable, "-m", "digitlib", "eval-drawings", str(path), "--json", "--model", str(model)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, (json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None)


def test_eval_drawings_reports_accuracy_ece_and_rejection_over_digits_and_non_digits(eleven, tmp_path):
    digit_lines = PEN.read_text().splitlines()[:60]
    other_lines = NON_DIGITS.read_text().splitlines()[:40]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(digit_lines[:30] + other_lines + digit_lines[30:]) + "\n")
    done, result = _eval_drawings(mixed, eleven)
    assert done.returncode == 0, done.stderr
    # The same figures, computed here from the served model.
    served = load_onnx_model(eleven)
    digits = [json.loads(line) for line in digit_lines]
    probabilities, not_digit = served.predict(np.stack([strokes_to_input(d["strokes"]) for d in digits]))
    labels = np.array([d["label"] for d in digits])
    others = np.stack([strokes_to_input(json.loads(line)["strokes"]) for line in other_lines])
    assert result["n"] == 60 and result["non_digits"] == 40
    assert result["accuracy"] == pytest.approx((probabilities.argmax(1) == labels).mean(), abs=1e-6)
    assert result["ece"] == pytest.approx(calibration.ece(probabilities, labels), abs=1e-4)
    assert result["rejection"]["digits"] == pytest.approx(served.is_not_digit(not_digit).mean())
    assert result["rejection"]["non_digits"] == pytest.approx(served.is_not_digit(served.predict(others)[1]).mean())


def test_eval_drawings_of_only_non_digits_has_no_accuracy_and_counts_them(eleven, tmp_path):
    only = tmp_path / "only.jsonl"
    only.write_text("\n".join(NON_DIGITS.read_text().splitlines()[:25]) + "\n")
    done, result = _eval_drawings(only, eleven)
    assert done.returncode == 0, done.stderr
    assert result["accuracy"] is None and result["n"] == 25 and result["ece"] is None
    assert result["rejection"]["digits"] is None and 0 <= result["rejection"]["non_digits"] <= 1


def test_a_label_that_is_neither_a_digit_nor_null_is_still_one_error_line(eleven, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(NON_DIGITS.read_text().splitlines()[0].replace('"label": null', '"label": "star"') + "\n")
    done, _ = _eval_drawings(bad, eleven)
    assert done.returncode == 2
    assert "line 1" in done.stderr and "neither a digit 0-9 nor null" in done.stderr
    assert "Traceback" not in done.stderr


# --- training with negatives -----------------------------------------------------------------


@pytest.mark.slow
def test_training_with_negatives_gives_an_eleven_output_model_calibrated_on_validation_data(tmp_path):
    from digitlib.dataset import load_mnist, train_val_split
    from digitlib.modeling.train import recipe, save_training, train

    train_digits, val_digits = train_val_split(load_mnist("train"), 500, seed=0)
    cfg = recipe("default", arch="seed", epochs=1, train_subset=1000, augment="none", negatives=0.3, threads=1)
    result = train(cfg, train_digits, val_digits, progress=False)
    assert result.extra["outputs"] == 11
    assert result.extra["calibration"]["temperature"] > 0
    rejection = result.extra["rejection"]
    assert 0 < rejection["threshold"] < 1 and rejection["validation"]["pen_augmented_digits"] <= 0.01
    record = result.history[-1]
    assert {"train_loss", "train_clean_loss", "val_loss"} <= set(record)  # like with like: clean vs validation
    directory = save_training(result, tmp_path / "m")
    served, torch_model = load_onnx_model(directory), load_model(directory)
    assert served.rejection_threshold == rejection["threshold"]
    x = val_digits.images[:50].numpy()
    assert np.abs(served.predict(x)[1] - torch_model.predict(x)[1].numpy()).max() <= 1e-4
