"""The training benchmark's arithmetic and its JSON, which run_all turns into reports/benchmarks.md."""

import importlib.util
import json
import subprocess
import sys

import pytest

from digitlib import config


def load_benchmark(name):
    spec = importlib.util.spec_from_file_location(name, config.PROJ_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_speed = load_benchmark("train_speed")
run_all = load_benchmark("run_all")


def test_time_to_target_is_the_first_epoch_that_reaches_it():
    curve = [(1.0, 0.98), (2.0, 0.991), (3.0, 0.989), (4.0, 0.996)]
    assert train_speed.time_to(curve, 0.99) == 2.0
    assert train_speed.time_to(curve, 0.995) == 4.0
    assert train_speed.time_to(curve, 0.999) is None


def test_median_over_repeats_counts_misses_as_slowest():
    assert train_speed.median_or_none([0.4, 0.3, 0.5]) == 0.4
    assert train_speed.median_or_none([0.4, None, 0.3]) == 0.4
    assert train_speed.median_or_none([0.4, None, None]) is None


@pytest.mark.slow
def test_benchmark_json_becomes_report_rows():
    command = [
        sys.executable,
        "benchmarks/train_speed.py",
        "--recipes",
        "seed",
        "sprint",
        "--repeats",
        "2",
        "--epochs-seed",
        "1",
    ]
    done = subprocess.run(
        [*command, "--train-subset", "2048", "--json"], cwd=config.PROJ_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    sprint = next(r for r in report["runs"] if r["name"] == "sprint")
    assert (sprint["batch_size"], sprint["repeats"], report["device"]) == (512, 2, "cpu")
    assert 0.3 < sprint["test_accuracy"] < 0.99  # 2,048 images, one epoch: learning, not done
    assert sprint["seconds_to_99"] is None and sprint["images_per_second"] > 0
    rows = dict(run_all.figures_of("train_speed", report))
    label = f"sprint recipe (vggbn, 1 epoch, batch 512, {sprint['precision']})"
    assert rows[f"{label}: time to 99% test accuracy"] == "not reached"
    assert "default/seed training images/s ratio (same run)" not in rows  # no default recipe in this run


def test_every_recipe_is_benchmarked():
    from digitlib.modeling.train import RECIPES

    assert sorted(train_speed.IN_ORDER) == sorted(RECIPES)


def test_dashboard_latency_json_becomes_report_rows():
    done = subprocess.run(
        [sys.executable, "benchmarks/dashboard_latency.py", "--no-browser", "--drawings", "20"]
        + ["--compare-limit", "100", "--json"],
        cwd=config.PROJ_ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "threads)" in report["machine"]  # the same hardware name as the training benchmark
    assert 0 < report["python"]["p50_ms"] <= report["python"]["p99_ms"]
    rows = dict(run_all.figures_of("dashboard_latency", report))
    assert rows["strokes to probabilities p50 (1 thread)"] == f"{report['python']['p50_ms']:.2f} ms"
    assert not any("Chromium" in figure for figure in rows)  # no browser run, no browser rows


def test_crowd_json_becomes_report_rows():
    report = {
        "client": "protocol",
        "visitors": 50,
        "rate_per_s": 1.0,
        "think_s": [2.0, 3.0],
        "drawings_per_visitor": 5,
        "served": 48,
        "page_open_s": {"p50": 0.4, "p95": 2.5, "max": 3.1},
        "stroke_to_prediction_ms": {"p50": 40.0, "p95": 120.0, "p99": 200.0, "max": 300.0, "n": 500},
        "answers_saved": 240,
        "rows_stored": 241,
        "answers_stored_exactly_once": False,
    }
    rows = dict(run_all.figures_of("crowd", report))
    label = "50 simulated visitors, 1/s, 5 digits each, 2-3 s think"
    assert rows[f"{label}: served"] == "48/50"
    assert rows[f"{label}: stroke end to prediction p50 / p95 / p99 / max"] == "40.0 / 120.0 / 200.0 / 300.0 ms"
    assert rows[f"{label}: answers saved / rows stored"] == "240 / 241, NOT each once"
    assert not any("RSS" in figure for figure in rows)  # a server at --url without its pid: no memory rows
    assert "crowd" in run_all.BENCHMARKS
