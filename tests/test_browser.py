"""The dashboard end to end: Voilà on a free port, headless Chromium driven by Playwright.

Draw a digit with the mouse, wait for the prediction, press a label, find the row in the
database. The server runs in its own process group, killed whole (kernels included) at the end.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_model import tiny_model_dir

from digitlib import config
from digitlib.store import FeedbackStore

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
NOTEBOOK = config.PROJ_ROOT / "dashboards" / "digits.ipynb"
SERVER_START_S = 90
A_SEVEN = [(60, 50), (220, 50), (120, 240)]  # canvas pixels


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(port: int, process: subprocess.Popen, timeout: float) -> None:
    """Poll until the server answers HTTP at all (not the page itself: that would take a kernel)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"voila exited with code {process.returncode} before serving on port {port}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("HEAD", "/api")
            connection.getresponse()
            return
        except OSError:
            time.sleep(0.3)
        finally:
            connection.close()
    pytest.fail(f"voila did not answer on port {port} within {timeout} s")


def start_voila(port: int, env: dict) -> subprocess.Popen:
    """Voilà as the Makefile serves it (voila.json: preheated kernels), in a process group of its own."""
    command = [sys.executable, "-m", "voila", str(NOTEBOOK), f"--port={port}", "--no-browser", "--pool_size=1"]
    return subprocess.Popen(
        command,
        cwd=config.PROJ_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,  # a full pipe would block the server
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, database_url) of a running dashboard using a tiny model and a temporary SQLite file."""
    model = tiny_model_dir(tmp_path_factory)
    database = tmp_path_factory.mktemp("browser-db") / "feedback.db"
    env = {**os.environ, config.MODEL_DIR.name: str(model), config.DATABASE_URL.name: f"sqlite:///{database}"}
    port = free_port()
    process = start_voila(port, env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(port, process, SERVER_START_S)
        yield url, env[config.DATABASE_URL.name]
    finally:
        stop_group(process)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs Debian's Chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def draw(page, strokes) -> None:
    """Mouse strokes over the canvas, in canvas pixels, with many small moves like a hand."""
    box = page.locator(".digit-canvas").bounding_box()
    scale = box["width"] / 280
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=15)
        page.mouse.up()


def wait_for_text(page, selector: str, pattern: str, timeout_ms: int = 15_000) -> str:
    page.wait_for_function(
        "([sel, pat]) => { const e = document.querySelector(sel);"
        " return e && new RegExp(pat).test(e.innerText.trim()); }",
        arg=[selector, pattern],
        timeout=timeout_ms,
    )
    return page.locator(selector).inner_text().strip()


def test_draw_predict_label_and_store(server, browser):
    url, database_url = server
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.goto(url)
    canvas = page.locator(".digit-canvas")
    canvas.wait_for(state="visible", timeout=60_000)
    box = canvas.bounding_box()
    assert (round(box["width"]), round(box["height"])) == (280, 280)  # not stretched by the layout
    assert "Draw a digit" in wait_for_text(page, ".digit-prediction", "Draw a digit")
    for css in ["digit-correct", "digit-clear", "digit-undo", "digit-status", *(f"digit-label-{d}" for d in range(10))]:
        assert page.locator(f".{css}").count() == 1, css

    draw(page, [A_SEVEN])
    predicted = wait_for_text(page, ".digit-prediction", r"^[0-9]$")
    # The ink is on the canvas: white on black where the stroke went.
    pixel = page.evaluate(
        "() => Array.from(document.querySelector('canvas.digit-canvas')"
        ".getContext('2d').getImageData(140, 50, 1, 1).data)"
    )
    assert pixel[:3] == [255, 255, 255]

    page.locator(".digit-label-7").click()
    status = wait_for_text(page, ".digit-status", "Saved")
    assert "Saved as 7" in status
    assert "Draw a digit" in wait_for_text(page, ".digit-prediction", "Draw a digit")  # cleared for the next
    # A second click on the same drawing stores nothing more.
    assert page.locator(".digit-label-7").is_disabled()

    store = FeedbackStore(database_url)
    [row] = store.rows()
    assert row["true_label"] == 7 and row["predicted"] == int(predicted)
    assert row["canvas_size"] == 280 and len(row["strokes"]) == 1
    assert row["strokes"][0][0] == pytest.approx([60, 50], abs=1)
    assert row["image"].startswith(b"\x89PNG")
    store.dispose()
    page.close()
