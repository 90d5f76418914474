"""The serving side never loads torch: each module is imported in a fresh interpreter and checked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import save_untrained_model


def fresh_interpreter(code: str, env: dict | None = None) -> dict:
    """Run `code` in a new Python; it prints one JSON object as its last line."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "module",
    [
        "digitlib.store",
        "digitlib.preprocess",
        "digitlib.registry",
        "digitlib.dashboard",
        "digitlib.stroke_pad",
        "digitlib.serving",
    ],
)
def test_serving_modules_import_no_torch(module):
    result = fresh_interpreter(f"import json, sys, {module}; print(json.dumps({{'torch': 'torch' in sys.modules}}))")
    assert result == {"torch": False}


def test_config_imports_no_other_project_module():
    result = fresh_interpreter(
        "import json, sys, digitlib.config; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('digitlib'))))"
    )
    assert result == ["digitlib", "digitlib.config"]


def test_a_dashboard_predicts_and_follows_the_registry_without_torch(tmp_path):
    """The whole visitor path (build the page, draw, predict, hot swap) in an interpreter without torch."""
    import os

    models = tmp_path / "models"
    for seed, name in ((0, "default"), (1, "cand")):
        save_untrained_model(models / name, onnx_check_limit=100, seed=seed)
    code = f"""
import json, sys
from pathlib import Path
from digitlib import dashboard, registry
from digitlib.store import FeedbackStore
models = Path({str(models)!r})
dash = dashboard.Dashboard(registry.LiveModel(models), FeedbackStore("sqlite:///{tmp_path / "f.db"}"))
dash.on_pad_message(dash.canvas, {{"event": "stroke", "points": [60, 50, 220, 50, 120, 240]}})
first = dash.prediction.model_version
registry.promote("cand", models, force=True)
dash.on_pad_message(dash.canvas, {{"event": "stroke", "points": [140, 40, 140, 240]}})
print(json.dumps({{"first": first, "second": dash.prediction.model_version, "torch": "torch" in sys.modules}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "DIGITLIB_MODEL"}
    result = fresh_interpreter(code, env)
    versions = {n: json.loads((models / n / "metadata.json").read_text())["version"] for n in ("default", "cand")}
    assert result == {"first": versions["default"], "second": versions["cand"], "torch": False}
