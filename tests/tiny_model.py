"""Kept until every module asks for conftest's `tiny_model_dir` fixture instead (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import train_tiny_model


def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny model (trained once, shared by the test modules); see conftest.tiny_model_dir."""
    try:
        return train_tiny_model(tmp_path_factory.getbasetemp() / "tiny-model")
    except RuntimeError as e:
        pytest.fail(str(e))
