"""How fast the drawing dashboard answers, and what a visitor costs in memory.

1. Strokes to probabilities in Python, the dashboard's path (preprocess.strokes_to_input +
   the ONNX model's predict_proba, one thread) over the recorded pen drawings: p50 and p99;
   the same with the torch model for comparison; and whether ONNX and torch predict the same
   classes on the whole MNIST test set and every pen drawing (counts).
2. A fresh interpreter importing the dashboard module and loading the model, as a visitor's
   kernel does: its RSS, wall time and CPU time, and whether torch got imported.
3. In headless Chromium against a running Voilà server (voila.json: preheated kernels):
   page open to an interactive canvas (its black background drawn by the page's pad once the
   widgets are shown), and pointer-up to the new prediction shown, over several strokes.
4. Kernel RSS per open dashboard session, and how many sessions fit in this machine's memory.

    .venv/bin/python benchmarks/dashboard_latency.py [--model DIR] [--strokes 15] [--pages 3] [--no-browser] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from dashboard_server import CHROMIUM, CHROMIUM_ARGS, kernels_of, running_voila

from digitlib import config
from digitlib.dashboard import predict_strokes
from digitlib.drawings import load_drawings
from digitlib.modeling.checkpoint import load_model
from digitlib.modeling.train import hardware_name
from digitlib.preprocess import strokes_to_input
from digitlib.registry import resolve_model_dir
from digitlib.serving import load_onnx_model

# Marks pointer-up (when the pad sends the stroke) and the first change of the probability bars after it, in page time.
WATCH_PREDICTIONS = """() => {
  window.__up = 0; window.__shown = 0;
  document.addEventListener('pointerup', () => { window.__up = performance.now(); window.__shown = 0; }, true);
  const bars = document.querySelector('.digit-bars').parentElement;
  new MutationObserver(() => { if (window.__up && !window.__shown) window.__shown = performance.now(); })
    .observe(bars, {childList: true, subtree: true, characterData: true});
}"""
CANVAS_READY = """() => { const c = document.querySelector('canvas.digit-canvas');
  return c && c.getContext('2d').getImageData(2, 2, 1, 1).data[3] === 255; }"""


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def stroke_latencies(model, drawings) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds per drawing. CPU time (this thread: one-thread inference runs on
    it) is what a prediction costs; wall time adds waiting for a core on a busy machine."""
    predict_strokes(model, drawings[0].strokes)  # warm-up: first call allocates
    wall, cpu = [], []
    for d in drawings:
        start, start_cpu = time.perf_counter(), time.thread_time()
        predict_strokes(model, d.strokes)
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.thread_time() - start_cpu) * 1000)
    return wall, cpu


def python_latency(model_dir: str | None, limit: int, compare_limit: int | None = None) -> dict:
    """Strokes -> probabilities on one thread: the ONNX model the dashboard serves, and torch."""
    torch.set_num_threads(1)
    directory = Path(model_dir) if model_dir else resolve_model_dir()
    served, torch_model = load_onnx_model(directory), load_model(directory)
    drawings = load_drawings(config.DRAWINGS_FILE.get())
    onnx_times, onnx_cpu = stroke_latencies(served, drawings[:limit])
    torch_times, torch_cpu = stroke_latencies(torch_model, drawings[:limit])
    # Accuracy unchanged: the same classes from both on every MNIST test image and pen drawing.
    from digitlib.dataset import load_mnist

    torch.set_num_threads(os.cpu_count() or 1)
    sets = {
        "mnist_test": load_mnist("test").images.numpy()[:compare_limit],
        "pen_digits": np.stack([strokes_to_input(d.strokes) for d in drawings[:compare_limit]]),
    }
    same = {}
    for name, images in sets.items():
        a = served.predict_proba(images)
        b = torch_model.predict_proba(images).numpy()
        same[name] = {
            "n": len(images),
            "same_class": int((a.argmax(1) == b.argmax(1)).sum()),
            "max_probability_difference": float(np.abs(a - b).max()),
        }
    return {
        "model": str(directory),
        "arch": served.metadata.get("arch"),
        "drawings": len(onnx_times),
        "served": "model.onnx, ONNX Runtime",
        "p50_ms": round(percentile(onnx_times, 50), 2),
        "p99_ms": round(percentile(onnx_times, 99), 2),
        "cpu_p50_ms": round(percentile(onnx_cpu, 50), 2),
        "cpu_p99_ms": round(percentile(onnx_cpu, 99), 2),
        "torch_p50_ms": round(percentile(torch_times, 50), 2),
        "torch_p99_ms": round(percentile(torch_times, 99), 2),
        "torch_cpu_p99_ms": round(percentile(torch_cpu, 99), 2),
        **{f"same_class_{name}": f"{v['same_class']}/{v['n']}" for name, v in same.items()},
        "max_probability_difference": max(v["max_probability_difference"] for v in same.values()),
    }


KERNEL_IMPORT = """
import json, os, resource, sys, time
start = time.perf_counter()
from digitlib import dashboard
from digitlib.registry import LiveModel
model = LiveModel().get() if not os.environ.get("BENCH_MODEL") else dashboard.load_onnx_model(os.environ["BENCH_MODEL"])
model.predict_proba(__import__("numpy").zeros((1, 28, 28), "uint8"))
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)  # CPU of the whole process, interpreter start included
# VmHWM, not ru_maxrss: on Linux the latter keeps the parent's peak across fork and exec.
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
rss, peak = (int(status[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))
print(json.dumps({"rss_mib": rss, "peak_rss_mib": peak, "import_wall_s": wall,
                  "cpu_s": usage.ru_utime + usage.ru_stime, "torch": "torch" in sys.modules}))
"""


def kernel_import(model_dir: str | None, runs: int = 5) -> dict:
    """What a visitor's kernel pays before the page works: import the dashboard module, load the model."""
    env = {**os.environ, **({"BENCH_MODEL": str(Path(model_dir).resolve())} if model_dir else {})}
    results = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", KERNEL_IMPORT], capture_output=True, text=True, env=env, check=True
        )
        results.append({**json.loads(done.stdout.splitlines()[-1]), "wall_s": time.perf_counter() - start})
    return {
        "runs": runs,
        "torch_imported": any(r["torch"] for r in results),
        "rss_mib_median": round(statistics.median(r["rss_mib"] for r in results), 1),
        "peak_rss_mib_max": round(max(r["peak_rss_mib"] for r in results), 1),
        "wall_s_median": round(statistics.median(r["wall_s"] for r in results), 3),
        "import_and_load_wall_s_median": round(statistics.median(r["import_wall_s"] for r in results), 3),
        "cpu_s_median": round(statistics.median(r["cpu_s"] for r in results), 3),
        "cpu_s_max": round(max(r["cpu_s"] for r in results), 3),
    }


def kernels(server: subprocess.Popen) -> list[psutil.Process]:
    return kernels_of(server.pid)


def wait_for_pool(server: subprocess.Popen, idle: int, timeout: float = 120) -> None:
    """Wait until `idle` preheated kernels exist beyond the ones pages use (and are done starting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(kernels(server)) < idle:
        time.sleep(0.5)
    time.sleep(8)  # a started kernel still runs the notebook before it is preheated


def stroke_points(strokes, box) -> list[list[tuple[float, float]]]:
    scale = box["width"] / 280
    return [[(box["x"] + x * scale, box["y"] + y * scale) for x, y in s] for s in strokes]


def browser_figures(model_dir: str | None, n_strokes: int, n_pages: int) -> dict:
    from playwright.sync_api import sync_playwright

    database = Path(tempfile.mkdtemp(prefix="dashboard-bench-")) / "feedback.db"
    env = {**os.environ, config.DATABASE_URL.name: f"sqlite:///{database}"}
    if model_dir:
        env[config.MODEL_DIR.name] = str(Path(model_dir).resolve())
    strokes = [s for d in load_drawings(config.DRAWINGS_FILE.get())[:n_strokes] for s in d.strokes[:1]]
    opens, latencies, rss = [], [], []
    with running_voila(env) as (port, server), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pages = []
        for _ in range(n_pages):
            wait_for_pool(server, idle=len(pages) + 1)
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            start = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function(CANVAS_READY, timeout=60_000, polling=20)
            opens.append(time.perf_counter() - start)
            pages.append(page)
        # A page open makes Voila start a kernel to refill its pool, which would slow these strokes
        wait_for_pool(server, idle=len(pages) + 1)
        page = pages[0]
        page.evaluate(WATCH_PREDICTIONS)
        box = page.locator(".digit-canvas").bounding_box()
        for stroke in stroke_points(strokes, box):
            page.locator(".digit-clear").click()
            page.wait_for_function("() => document.querySelector('.digit-prediction').innerText.includes('Draw')")
            time.sleep(0.2)  # let the cleared bars arrive before the next measured mouse-up
            page.mouse.move(*stroke[0])
            page.mouse.down()
            for point in stroke[1:]:
                page.mouse.move(*point)
            page.mouse.up()
            page.wait_for_function("() => window.__shown > 0", timeout=10_000, polling="raf")
            latencies.append(page.evaluate("() => window.__shown - window.__up"))
        time.sleep(1)
        rss = [k.memory_info().rss / 2**20 for k in kernels(server)]
        browser.close()
    per_session = max(rss) if rss else float("nan")
    available = psutil.virtual_memory().available / 2**20
    return {
        "page_open_to_canvas_s": [round(t, 2) for t in opens],
        "page_open_to_canvas_median_s": round(statistics.median(opens), 2),
        "mouseup_to_prediction_ms": [round(t) for t in latencies],
        "mouseup_to_prediction_median_ms": round(statistics.median(latencies)),
        "mouseup_to_prediction_max_ms": round(max(latencies)),
        "kernel_rss_mib": [round(r) for r in rss],
        "kernel_rss_per_session_mib": round(per_session),
        "memory_available_mib": round(available),
        "sessions_that_fit": int(available // per_session) if rss else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: DIGITLIB_MODEL, models/default)")
    parser.add_argument(
        "--drawings", type=int, default=1000, help="first N recorded drawings for the Python latency (default 1000)"
    )
    parser.add_argument(
        "--compare-limit", type=int, help="ONNX vs torch on the first N images of each set (default: all)"
    )
    parser.add_argument("--strokes", type=int, default=15, help="strokes drawn in the browser")
    parser.add_argument("--pages", type=int, default=3, help="pages opened (sessions measured)")
    parser.add_argument("--no-browser", action="store_true", help="only the Python latency")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    result = {"machine": hardware_name(torch.device("cpu"))}
    result["python"] = python_latency(args.model, args.drawings, args.compare_limit)
    result["kernel_import"] = kernel_import(args.model)
    if not args.no_browser:
        result["browser"] = browser_figures(args.model, args.strokes, args.pages)
    for section, figures in result.items():
        print(f"{section}: {figures}" if isinstance(figures, str) else f"{section}:")
        if isinstance(figures, dict):
            for key, value in figures.items():
                print(f"  {key:>30}: {value}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
