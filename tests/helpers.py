"""Data and small helpers that the test modules share (their fixtures are in conftest.py).

Import them by name (`from helpers import SEVEN, make_feedback`): pytest puts tests/ on sys.path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from digitlib.preprocess import strokes_to_input
from digitlib.serving import WEIGHTS_FILE
from digitlib.store import Feedback

# The project's PostgreSQL for tests, and an address where nothing listens (port 1).
PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
UNREACHABLE_URL = "postgresql+psycopg2://postgres@127.0.0.1:1/test"

# A 7 drawn in one stroke, in canvas pixels (280x280), as the dashboard records strokes.
SEVEN = [[[100, 60], [180, 60], [130, 220]]]
SEVEN_IMAGE = np.asarray(strokes_to_input(SEVEN))  # the 28x28 model input the dashboard stores for it
PROBABILITIES = [0.01] * 7 + [0.91] + [0.01] * 2  # a model quite sure it is a 7

# Training that takes seconds on a CPU: enough to learn something, never to measure a model.
TINY_TRAINING = {"epochs": 1, "arch": "seed", "train_subset": 1000, "augment": "none", "val_size": 1000}


def make_feedback(label: int = 7, strokes=SEVEN, **changes) -> Feedback:
    """One visitor's answer on `strokes` (by default a 7 that the model called a 7).

    The image is SEVEN's whatever the strokes (pass `image=` to change it): tests of bad strokes
    must reach the store's own checks, which a rendering here would pre-empt.
    """
    args = {
        "strokes": strokes,
        "true_label": label,
        "probabilities": PROBABILITIES,
        "image": SEVEN_IMAGE,
        "model_version": "test-model-1",
        "session_id": "session-1",
        **changes,
    }
    return Feedback.create(**args)


def save_untrained_model(directory: Path, arch: str = "seed", onnx_check_limit: int = 100, seed: int = 0) -> Path:
    """A model directory with seeded random weights, for tests about files and input, not accuracy.

    Its ONNX export is checked on the first `onnx_check_limit` images of each set: seconds, not minutes.
    """
    import torch

    from digitlib.modeling.checkpoint import save_model
    from digitlib.modeling.models import build_model

    with torch.random.fork_rng():  # the seed stays with this model, not with the tests after it
        torch.manual_seed(seed)
        model = build_model(arch)
    return save_model(model, directory, {"arch": arch, "arch_params": {}}, onnx_check_limit=onnx_check_limit)


def cli_options(settings: dict) -> list[str]:
    """{"train_subset": 1000} -> ["--train-subset", "1000"], as `digitlib train` takes them."""
    return [item for name, value in settings.items() for item in (f"--{name.replace('_', '-')}", str(value))]


def train_tiny_model(out: Path) -> Path:
    """Train a tiny model with the CLI into `out` (once: an existing model there is kept)."""
    if not (out / WEIGHTS_FILE).is_file():
        training = cli_options({**TINY_TRAINING, "train_subset": 2000})
        command = [sys.executable, "-m", "digitlib", "train", "--out", str(out), "--no-test", *training]
        # Its ONNX export is checked on the first 1000 images of each set, not all (seconds, not a minute).
        env = {**os.environ, "DIGITLIB_ONNX_CHECK": "1000"}
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"training the tiny test model failed:\n{done.stderr[-2000:]}")
    return out


@contextmanager
def dashboard_on(model_dir: Path, database: Path, timeout: float = 90) -> Iterator[tuple[str, str]]:
    """(url, database_url) of a running dashboard serving `model_dir`, storing into the SQLite file
    `database`, one kernel preheated."""
    from dashboard_server import running_voila  # benchmarks/: on sys.path by conftest

    from digitlib import config

    database_url = f"sqlite:///{database}"
    env = {**os.environ, config.MODEL_DIR.name: str(model_dir), config.DATABASE_URL.name: database_url}
    with running_voila(env, timeout=timeout, extra_args=["--pool_size=1"]) as (port, _):
        yield f"http://127.0.0.1:{port}/", database_url
