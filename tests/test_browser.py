"""The dashboard end to end: Voilà on a free port, headless Chromium driven by Playwright.

Draw a digit with the mouse, wait for the prediction, press a label, find the row in the
database; a closed page's kernel is shut down; hostile websocket frames leave the page working.
The server runs in its own process group, killed whole (kernels included) at the end.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from dashboard_driver import draw_in_page as draw
from dashboard_driver import ink_at, kernel_of, wait_for_text
from dashboard_server import CHROMIUM, CHROMIUM_ARGS
from helpers import dashboard_on

from digitlib.store import FeedbackStore
from digitlib.voila_guard import DISCONNECT_GRACE_S

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SERVER_START_S = 90
A_SEVEN = [(60, 50), (220, 50), (120, 240)]  # canvas pixels: a 7 the tiny model reads as a digit


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    """(url, database_url) of a running dashboard using a tiny model and a temporary SQLite file."""
    with dashboard_on(tiny_model_dir, tmp_path_factory.mktemp("browser-db") / "feedback.db", SERVER_START_S) as served:
        yield served


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs Debian's Chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_draw_predict_label_and_store(server, browser):
    url, database_url = server
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.goto(url, timeout=120_000)  # Voilà holds the page until the preheated kernel has run the notebook
    canvas = page.locator(".digit-canvas")
    canvas.wait_for(state="visible", timeout=60_000)
    box = canvas.bounding_box()
    assert (round(box["width"]), round(box["height"])) == (280, 280)  # not stretched by the layout
    assert "Draw a digit" in wait_for_text(page, ".digit-prediction", "Draw a digit")
    for css in ["digit-correct", "digit-clear", "digit-undo", "digit-status", *(f"digit-label-{d}" for d in range(10))]:
        assert page.locator(f".{css}").count() == 1, css
    # Nothing to answer yet: the answer buttons say so to assistive technology too, not only by their look.
    page.wait_for_selector(".digit-label-7[aria-disabled='true']")
    assert page.locator(".digit-correct").get_attribute("aria-disabled") == "true"

    draw(page, [A_SEVEN])
    page.wait_for_selector(".digit-label-7[aria-disabled='false']")
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
    # A second click on the same drawing stores nothing more: the answer buttons are off.
    page.wait_for_selector(".digit-dashboard.digit-answers-off")
    assert page.locator(".digit-label-7").evaluate("b => getComputedStyle(b).pointerEvents") == "none"
    page.wait_for_selector(".digit-label-7[aria-disabled='true']")

    store = FeedbackStore(database_url)
    [row] = store.rows()
    assert row["true_label"] == 7 and row["predicted"] == int(predicted)
    assert row["canvas_size"] == 280 and len(row["strokes"]) == 1
    assert row["strokes"][0][0] == pytest.approx([60, 50], abs=1)
    assert row["image"].startswith(b"\x89PNG")
    store.dispose()
    page.close()


def test_a_stroke_is_one_message_and_undo_follows_the_kernel(server, browser):
    """The page draws the ink itself and sends the stroke once at pointer-up; it sends no widget state."""
    from voila_client import decode_v1

    url, _ = server
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    sent = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda frame: sent.append(frame)))
    page.goto(url, timeout=120_000)
    page.locator(".digit-canvas").wait_for(state="visible", timeout=60_000)
    draw(page, [A_SEVEN])  # 30 pointer moves
    wait_for_text(page, ".digit-prediction", r"^[0-9]$")
    assert ink_at(page, 140, 50)[:3] == [255, 255, 255]
    # What the model saw is drawn on the preview (an ipycanvas Canvas, 28x28).
    page.wait_for_function(
        """() => { const c = document.querySelector('canvas.digit-preview')
            || document.querySelector('.digit-preview canvas');
          return c && c.getContext('2d').getImageData(0, 0, 28, 28).data.some((v, i) => i % 4 === 0 && v > 0); }"""
    )
    page.locator(".digit-undo").click()
    wait_for_text(page, ".digit-prediction", "Draw a digit")
    page.wait_for_function("() => document.querySelector('canvas.digit-canvas').dataset.predicted === '2'")
    page.wait_for_function(
        "() => document.querySelector('canvas.digit-canvas').getContext('2d').getImageData(140, 50, 1, 1).data[0] === 0"
    )
    page.close()

    comm = [decode_v1(f)[4]["data"] for f in sent if isinstance(f, bytes) and decode_v1(f)[1]["msg_type"] == "comm_msg"]
    assert not [d for d in comm if d["method"] == "update"], "the page sent widget state"
    custom = [d["content"] for d in comm if d["method"] == "custom"]
    # client_ready from the pad and from the model-input preview, in the order they were shown
    assert sorted(c.get("event") for c in custom) == ["click", "client_ready", "client_ready", "stroke"], custom
    [stroke] = [c["points"] for c in custom if c.get("event") == "stroke"]
    xs, ys = stroke[0::2], stroke[1::2]
    assert len(stroke) % 2 == 0 and len(xs) > 10  # the whole stroke, points in between included
    assert (xs[0], ys[0]) == pytest.approx((60, 50), abs=1.5) and (xs[-1], ys[-1]) == pytest.approx((120, 240), abs=1.5)


def test_a_browser_cannot_run_code_in_the_dashboard_kernel(server, browser, tmp_path):
    """A hostile page script sends execute_request over the kernel's websocket: Voilà drops it.

    A comm_info_request sent on the same socket is answered, so the socket works and only
    code execution is refused.
    """
    url, _ = server
    marker = tmp_path / "ran"
    page = browser.new_page()
    page.goto(url, timeout=120_000)  # Voilà holds the page until the preheated kernel has run the notebook
    page.locator(".digit-canvas").wait_for(state="visible", timeout=60_000)
    replies = page.evaluate(
        """async (code) => {
          const kernel = JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId;
          const ws = new WebSocket(`ws://${location.host}/api/kernels/${kernel}/channels?session_id=attacker`);
          const seen = [];
          ws.onmessage = (event) => seen.push(JSON.parse(event.data).header.msg_type);
          await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
          const send = (type, content) => ws.send(JSON.stringify({
            header: {msg_id: type + Math.random(), username: 'x', session: 'attacker', msg_type: type,
                     version: '5.3', date: new Date().toISOString()},
            parent_header: {}, metadata: {}, content: content, channel: 'shell', buffers: []}));
          send('execute_request', {code: code, silent: false, store_history: false, user_expressions: {},
                                   allow_stdin: false, stop_on_error: true});
          send('comm_info_request', {});
          for (let i = 0; i < 100 && !seen.includes('comm_info_reply'); i++) {
            await new Promise((r) => setTimeout(r, 100));
          }
          await new Promise((r) => setTimeout(r, 1000));  // time for an execute_reply, were it coming
          ws.close();
          return seen;
        }""",
        f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')",
    )
    page.close()
    assert "comm_info_reply" in replies, replies
    assert "execute_reply" not in replies and "execute_input" not in replies, replies
    assert not marker.exists()


def wait_until_gone(url: str, kernel_id: str, seconds: float = 20) -> bool:
    import requests

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if requests.get(f"{url}api/kernels/{kernel_id}", timeout=10).status_code == 404:
            return True
        time.sleep(0.5)
    return False


def test_a_closed_page_shuts_its_kernel_down(server, browser):
    """The page's unload beacon (POST /voila/api/shutdown/<id> with the _xsrf cookie) is accepted."""
    url, _ = server
    page = browser.new_page()
    page.goto(url, timeout=120_000)
    page.locator(".digit-canvas").wait_for(state="visible", timeout=60_000)
    kernel_id = kernel_of(page)
    assert any(c["name"] == "_xsrf" for c in page.context.cookies())
    page.close(run_before_unload=True)
    # The unload beacon, or (headless Chromium does not always run beforeunload on close) the
    # server once the page's websocket has been closed for DISCONNECT_GRACE_S.
    assert wait_until_gone(url, kernel_id, seconds=DISCONNECT_GRACE_S + 15)

    # Leaving after drawing: navigating away runs the unload beacon; the kernel goes at once.
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.goto(url, timeout=120_000)
    page.locator(".digit-canvas").wait_for(state="visible", timeout=60_000)
    kernel_id = kernel_of(page)
    draw(page, [A_SEVEN])
    wait_for_text(page, ".digit-prediction", r"^[0-9]$")
    page.goto("about:blank")
    assert wait_until_gone(url, kernel_id, seconds=DISCONNECT_GRACE_S / 2)
    page.close()


def test_the_page_works_after_hostile_frames_on_a_kernel_websocket(server, browser):
    """The 16-byte frame that made jupyter_server build 2**28 offsets, and friends, over a real socket."""
    import requests
    from dashboard_driver import HOSTILE_OFFSETS, KernelSocket, comm_update, v1_frame

    url, _ = server
    attacker = browser.new_page()
    attacker.goto(url, timeout=120_000)
    attacker.locator(".digit-canvas").wait_for(state="visible", timeout=60_000)
    sock = KernelSocket(url, kernel_of(attacker))
    for frame in [
        HOSTILE_OFFSETS,
        v1_frame("comm_msg", {}, raw_content=b"[" * 60_000),
        comm_update("x", {"width": 1e8}),
    ]:
        sock.send(frame)  # the server still answers (how fast: benchmarks/voila_attack.py)
        assert requests.get(f"{url}voila/static/materialcolors.css", timeout=10).status_code == 200
    sock.close()
    attacker.close()

    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.goto(url, timeout=120_000)
    page.locator(".digit-canvas").wait_for(state="visible", timeout=60_000)
    draw(page, [A_SEVEN])
    assert re.fullmatch(r"[0-9]", wait_for_text(page, ".digit-prediction", r"^[0-9]$"))
    page.close()
