"""Shared fixtures: the real MNIST files (from ../shared/data or the configured folder)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests share the benchmarks' helpers (benchmarks/dashboard_server.py, voila_client.py...): benchmarks
# run as scripts, so their folder, not a package, is what makes them importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

# Models saved by tests (tiny or random weights) check their ONNX export on the first 1000 images
# of each set, not all 14,657; the committed models/default was checked on everything.
os.environ.setdefault("DIGITLIB_ONNX_CHECK", "1000")

from digitlib.dataset import DataError, find_mnist_dir, load_mnist


@pytest.fixture(scope="session")
def mnist_dir():
    try:
        return find_mnist_dir(download=False)
    except DataError as e:
        pytest.fail(f"MNIST is needed for these tests: {e}")


@pytest.fixture(scope="session")
def mnist_train(mnist_dir):
    return load_mnist("train", mnist_dir)


@pytest.fixture(scope="session")
def mnist_test(mnist_dir):
    return load_mnist("test", mnist_dir)
