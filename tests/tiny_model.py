"""A tiny model for the dashboard tests, trained once per test session (seconds on a CPU).

The tests never depend on models/default: they point DIGITLIB_MODEL at this one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from digitlib.modeling.checkpoint import WEIGHTS_FILE

TINY_TRAINING = ["--epochs", "1", "--train-subset", "2000", "--val-size", "1000", "--augment", "none", "--arch", "seed"]


def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train (once per session, shared by the test modules) and return the model directory."""
    out = tmp_path_factory.getbasetemp() / "tiny-model"
    if not (out / WEIGHTS_FILE).is_file():
        command = [sys.executable, "-m", "digitlib", "train", "--out", str(out), "--no-test", *TINY_TRAINING]
        # Its ONNX export is checked on the first 1000 images of each set, not all (seconds, not a minute).
        env = {**os.environ, "DIGITLIB_ONNX_CHECK": "1000"}
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        if done.returncode != 0:
            pytest.fail(f"training the tiny test model failed:\n{done.stderr[-2000:]}")
    return out
