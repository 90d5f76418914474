"""Drivers for the dashboard's tests: its pad's messages in process, a page in Chromium, a kernel websocket by hand.

Import them by name (`from dashboard_driver import draw, wait_for_text`): pytest puts tests/ on sys.path.
"""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
from jupyter_server.services.kernels.connection.base import deserialize_msg_from_ws_v1, serialize_msg_to_ws_v1

from digitlib.voila_guard import V1

# --- the dashboard in process: messages as the page's pad sends them ------------------------------


def stroke_message(stroke) -> dict:
    """One stroke as the page sends it at pointer-up: flat x, y with points in between like a real pointer."""
    flat = list(stroke[0])
    for (x0, y0), (x1, y1) in zip(stroke, stroke[1:], strict=False):
        for t in np.linspace(0, 1, 12)[1:]:
            flat += [round(x0 + t * (x1 - x0), 1), round(y0 + t * (y1 - y0), 1)]
    return {"event": "stroke", "points": flat}


def draw(dash, strokes) -> None:
    """Draw on a digitlib.dashboard.Dashboard as a visitor's page would, one message per stroke."""
    for stroke in strokes:
        dash.on_pad_message(dash.canvas, stroke_message(stroke), [])


# --- a page in Chromium (Playwright) -------------------------------------------------------------------


def draw_in_page(page, strokes) -> None:
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


def ink_at(page, x: int, y: int) -> list[int]:
    """RGBA of the canvas pixel at (x, y)."""
    return page.evaluate(
        "([x, y]) => Array.from(document.querySelector('canvas.digit-canvas')"
        ".getContext('2d').getImageData(x, y, 1, 1).data)",
        [x, y],
    )


def kernel_of(page) -> str:
    return page.evaluate("JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId")


# --- a kernel websocket spoken to by hand (v1 protocol) ------------------------------------------------

HOSTILE_OFFSETS = bytes.fromhex("ffffff0f") + bytes(12)  # claims 2**28 - 1 offsets in 16 bytes


def v1_frame(msg_type: str, content: dict, channel: str = "shell", raw_content: bytes | None = None) -> bytes:
    header = {
        "msg_id": uuid.uuid4().hex,
        "username": "visitor",
        "session": "test",
        "msg_type": msg_type,
        "version": "5.3",
        "date": "2026-01-01T00:00:00.000Z",
    }
    parts = [json.dumps(header).encode(), b"{}", b"{}", raw_content or json.dumps(content).encode()]
    return serialize_msg_to_ws_v1(parts, channel)


def stroke_frame(comm_id: str, points) -> bytes:
    """A stroke as the page's pad sends it at pointer-up."""
    content = {"event": "stroke", "points": points}
    return v1_frame("comm_msg", {"comm_id": comm_id, "data": {"method": "custom", "content": content}})


def comm_update(comm_id: str, state: dict) -> bytes:
    return v1_frame("comm_msg", {"comm_id": comm_id, "data": {"method": "update", "state": state, "buffer_paths": []}})


class KernelSocket:
    """A page's kernel websocket spoken to by hand (v1 protocol)."""

    def __init__(self, url: str, kernel_id: str) -> None:
        import websocket

        ws_url = url.replace("http://", "ws://") + f"api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}"
        self.ws = websocket.create_connection(ws_url, subprotocols=[V1], timeout=30)

    def send(self, frame: bytes) -> None:
        self.ws.send_binary(frame)

    def replies(self, seconds: float):
        """(msg_type, content) of each message the kernel sends within `seconds`."""
        import websocket

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                frame = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                return
            _channel, parts = deserialize_msg_from_ws_v1(frame)
            yield json.loads(parts[0])["msg_type"], json.loads(parts[3])

    def ask(self, frame: bytes, wanted, seconds: float = 30):
        """The first reply for which `wanted(msg_type, content)` holds."""
        self.send(frame)
        for msg_type, content in self.replies(seconds):
            if wanted(msg_type, content):
                return content
        raise AssertionError("no such reply")

    def close(self) -> None:
        self.ws.close()
