"""The poisoned-feedback benchmark, tiny: it runs as a command and its last line has the promised shape."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from digitlib import config

SCRIPT = config.PROJ_ROOT / "benchmarks" / "poisoned_feedback.py"


@pytest.mark.slow
def test_tiny_poisoned_feedback_run_reports_flags_accuracies_and_the_gate():
    tiny = ["--per-site", "30", "--mnist-subset", "200", "--mnist-test-size", "200", "--mnist-validation-size", "500",
            "--attacks", "random,garbage", "--rates", "0.3", "--no-unchecked", "--json"]  # fmt: skip
    done = subprocess.run([sys.executable, str(SCRIPT), *tiny], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])["runs"]
    assert [(r["attack"], r["rate"]) for r in runs] == [("random", 0.0), ("random", 0.3), ("garbage", 0.3)]
    for run in runs:
        assert isinstance(run["promoted"], bool) and 0 <= run["candidate_unseen_accuracy"] <= 1
        assert 0 <= run["current_unseen_accuracy"] <= 1
        assert set(run["trusted_changes"]) == {"mnist_validation", "drawings"}
    clean, flipped, garbage = runs
    assert clean["injected"] == 0 and clean["flag_precision"] is None
    assert flipped["injected"] == 27 and garbage["injected"] == round(0.3 / 0.7 * 90)  # 30% of 90; 39 added
    # even at this size, the out-of-sample checks find most random flips, and little else
    assert flipped["flag_recall"] >= 0.75 and flipped["flag_precision"] >= 0.8
