"""A simulated dashboard visitor that speaks what the real page speaks, without a browser.

Copied from a recorded Chromium session (Playwright `page.on("websocket")`) against Voilà 0.5.13:
the page's HTML names the kernel (`"kernelId"` in jupyter-config-data); the page asks
GET /api/kernels/<id>, opens /api/kernels/<id>/channels with the subprotocol
`v1.kernel.websocket.jupyter.org` (binary v1 frames), sends kernel_info_request, opens a
`jupyter.widget.control` comm and asks it for every widget's state (`request_states`), closes
that comm, then talks to the models by their ids, all as comm_msg on shell: the drawing pad
(digitlib.stroke_pad, an anywidget) and the model-input preview (ipycanvas) send
`{"event": "client_ready"}` once shown, the pad one
`{"event": "stroke", "points": [x0, y0, ...]}` per stroke at pointer-up (mouse, touch and pen
alike: the page draws the ink itself), buttons `{"event": "click"}`. The page sends no widget
state. On unload it POSTs /voila/api/shutdown/<id> with the `_xsrf` cookie as a form field.
The kernel answers with comm_msg updates on iopub; the pad's `predicted` count going up marks a
prediction shown (it is set after the digit, bars and model input), the status line's "Saved"
an answer stored.
"""

from __future__ import annotations

import json
import math
import re
import struct
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urljoin, urlsplit

import requests
import websocket

SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"
KERNEL_ID = re.compile(r'"kernelId":\s*"([0-9a-f-]{36})"')
ASSET = re.compile(r'<(?:script|link)[^>]+(?:src|href)="(/[^"]+)"')
PROTOCOL_VERSION = "5.2"  # what the page's @jupyterlab/services sends
CANVAS_SIZE = 280  # what the page's pad clamps points to (digitlib.preprocess.CANVAS_SIZE)
MIN_STEP = 1.0  # canvas px: the page skips pointer moves closer than this to the last point
MAX_STROKE_POINTS = 1_000  # the page stops growing a stroke here (digitlib.stroke_pad)


class VisitError(RuntimeError):
    """The page did not behave as a visitor needs: what they would see as broken."""


def encode_v1(channel: str, header: dict, parent: dict, metadata: dict, content: dict, buffers=()) -> bytes:
    """One v1 websocket frame: offset count, offsets (the last is the end), channel, parts."""
    parts = [channel.encode(), *(json.dumps(p).encode() for p in (header, parent, metadata, content)), *buffers]
    offsets = [8 * (1 + len(parts) + 1)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets) + b"".join(parts)


def decode_v1(frame: bytes) -> tuple[str, dict, dict, dict, dict, list[bytes]]:
    """(channel, header, parent_header, metadata, content, buffers) of one v1 frame."""
    (count,) = struct.unpack_from("<Q", frame)
    if not 2 <= count <= 64 or len(frame) < 8 * (count + 1):
        raise VisitError(f"bad v1 frame: {count} offsets in {len(frame)} bytes")
    offsets = struct.unpack_from(f"<{count}Q", frame, 8)
    parts = [frame[offsets[i] : offsets[i + 1]] for i in range(count - 1)]
    channel = parts[0].decode()
    header, parent, metadata, content = (json.loads(p) if p else {} for p in parts[1:5])
    return channel, header, parent, metadata, content, parts[5:]


@dataclass
class Models:
    """The dashboard's widget model ids, found by their CSS classes in the widget state."""

    pad: str
    preview: str
    prediction: str
    status: str
    correct: str
    labels: dict[int, str]

    @classmethod
    def from_states(cls, states: dict) -> Models:
        by_class: dict[str, str] = {}
        for model_id, model in states.items():
            for css in model.get("state", {}).get("_dom_classes", []):
                by_class[css] = model_id
        try:
            return cls(
                pad=by_class["digit-pad"],
                preview=by_class["digit-preview"],
                prediction=by_class["digit-prediction"],
                status=by_class["digit-status"],
                correct=by_class["digit-correct"],
                labels={d: by_class[f"digit-label-{d}"] for d in range(10)},
            )
        except KeyError as e:
            shown = " | ".join(
                _text(str(m["state"].get("value", ""))) for m in states.values() if m.get("model_name") == "HTMLModel"
            )
            raise VisitError(f"the page has no widget with class {e}; it says: {shown[:300]}") from None


@dataclass
class Visit:
    """What one visitor saw: timings in seconds or milliseconds, answers as (label, first point)."""

    page_open_s: float | None = None
    page_retries: int = 0
    predict_ms: list[float] = field(default_factory=list)
    save_ms: list[float] = field(default_factory=list)
    answers_sent: list[tuple[int, float, float]] = field(default_factory=list)
    saved: list[tuple[int, float, float]] = field(default_factory=list)  # the answers that said "Saved"
    refused: list[str] = field(default_factory=list)  # status lines that were not "Saved"
    shutdown_status: int | None = None
    frames_sent: int = 0
    frames_received: int = 0
    kernel_id: str = ""
    error: str = ""

    @property
    def answers_saved(self) -> int:
        return len(self.saved)


class Visitor:
    """One page view: open, draw strokes, answer, close. Not thread-safe; one per thread."""

    def __init__(self, base_url: str, timeout: float = 60.0, fetch_assets: bool = True, move_interval_s=0.016):
        """`move_interval_s`: the time between a stroke's points as drawn (60 Hz pointer events)."""
        self.base = base_url.rstrip("/") + "/"
        self.timeout, self.fetch_assets, self.move_interval_s = timeout, fetch_assets, move_interval_s
        self.http = requests.Session()
        self.session = uuid.uuid4().hex
        self.ws: websocket.WebSocket | None = None
        self.kernel_id = ""
        self.models: Models | None = None
        self.visit = Visit()
        self._states: dict[str, dict] = {}  # latest state of every model, from updates

    # --- the wire ---------------------------------------------------------------------------

    def _send(self, channel: str, msg_type: str, content: dict, metadata: dict | None = None) -> str:
        msg_id = str(uuid.uuid4())
        header = {
            "date": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "msg_id": msg_id,
            "msg_type": msg_type,
            "session": self.session,
            "username": "",
            "version": PROTOCOL_VERSION,
        }
        self.ws.send_binary(encode_v1(channel, header, {}, metadata or {}, content))
        self.visit.frames_sent += 1
        return msg_id

    def _comm(self, comm_id: str, data: dict) -> str:
        return self._send("shell", "comm_msg", {"comm_id": comm_id, "data": data})

    def _recv(self, deadline: float):
        """The next message before `deadline` (monotonic), or None; model updates are applied."""
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        self.ws.settimeout(left)
        try:
            frame = self.ws.recv()
        except (TimeoutError, websocket.WebSocketTimeoutException):
            return None
        self.visit.frames_received += 1
        if not isinstance(frame, bytes):
            raise VisitError("the kernel websocket sent text: not the v1 protocol")
        msg = decode_v1(frame)
        channel, header, _, _, content, _ = msg
        if channel == "iopub" and header.get("msg_type") == "comm_msg":
            data = content.get("data", {})
            if data.get("method") == "update":
                self._states.setdefault(content.get("comm_id"), {}).update(data.get("state", {}))
        return msg

    def _wait(self, matches, what: str, timeout: float | None = None):
        """Read until `matches(msg)` is true; returns (msg, arrival time). VisitError on timeout."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            msg = self._recv(deadline)
            if msg is None:
                raise VisitError(f"no {what} within {timeout or self.timeout:.0f} s")
            if matches(msg):
                return msg, time.monotonic()

    def _pump(self, until: float) -> None:
        """Take in whatever arrives until `until` (a visitor's browser reads while they draw)."""
        while self._recv(until) is not None:
            pass

    @staticmethod
    def _update_of(comm_id: str, key: str):
        def matches(msg):
            channel, header, _, _, content, _ = msg
            data = content.get("data", {}) if header.get("msg_type") == "comm_msg" else {}
            return content.get("comm_id") == comm_id and data.get("method") == "update" and key in data.get("state", {})

        return matches

    # --- what a visitor does ----------------------------------------------------------------

    def open(self, retry_until: float | None = None) -> float:
        """Load the page until its pad can be drawn on; returns seconds taken (also in visit.page_open_s)."""
        started = time.monotonic()
        retry_until = retry_until or started + self.timeout
        while True:
            page = self.http.get(self.base, timeout=self.timeout)
            found = KERNEL_ID.search(page.text) if page.status_code == 200 else None
            if found:
                break
            # A busy or "starting" page: a browser would come back after Retry-After / a refresh.
            wait = float(page.headers.get("Retry-After", 0) or 0) or 1.0
            if time.monotonic() + wait > retry_until:
                raise VisitError(
                    f"page: HTTP {page.status_code} without a kernel after {self.visit.page_retries} retries"
                )
            self.visit.page_retries += 1
            time.sleep(wait)
        self.kernel_id = self.visit.kernel_id = found.group(1)
        if self.fetch_assets:  # the page's own scripts and styles (not the chunks they load)
            for path in dict.fromkeys(ASSET.findall(page.text)):
                self.http.get(urljoin(self.base, path), timeout=self.timeout)
        model = self.http.get(urljoin(self.base, f"api/kernels/{self.kernel_id}?{int(time.time() * 1000)}"))
        if model.status_code != 200:
            raise VisitError(f"GET /api/kernels/<id>: HTTP {model.status_code}")
        parts = urlsplit(self.base)
        scheme = "wss" if parts.scheme == "https" else "ws"
        url = f"{scheme}://{parts.netloc}{parts.path}api/kernels/{self.kernel_id}/channels?session_id={self.session}"
        cookie = "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())
        self.ws = websocket.create_connection(
            url, timeout=self.timeout, subprotocols=[SUBPROTOCOL], cookie=cookie or None, enable_multithread=False
        )
        if self.ws.getsubprotocol() != SUBPROTOCOL:
            raise VisitError(f"server chose subprotocol {self.ws.getsubprotocol()!r}")

        info = self._send("shell", "kernel_info_request", {})
        self._wait(
            lambda m: m[2].get("msg_id") == info and m[1]["msg_type"] == "kernel_info_reply", "kernel_info_reply"
        )
        control = str(uuid.uuid4())
        self._send(
            "shell",
            "comm_open",
            {"comm_id": control, "target_name": "jupyter.widget.control", "data": {}},
            {"version": "1.0.0"},
        )
        self._comm(control, {"method": "request_states"})
        msg, _ = self._wait(
            lambda m: m[4].get("comm_id") == control and m[4].get("data", {}).get("method") == "update_states",
            "widget states",
        )
        self._send("shell", "comm_close", {"comm_id": control, "data": {}})
        states = msg[4]["data"]["states"]
        self.models = Models.from_states(states)
        self._states = {mid: dict(m.get("state", {})) for mid, m in states.items()}
        # The pad draws its own background; once shown it says so (a fresh kernel has nothing to send back).
        # The model input preview (an ipycanvas Canvas) says so too and gets its pixels.
        self._comm(self.models.pad, {"method": "custom", "content": {"event": "client_ready"}})
        self._comm(self.models.preview, {"method": "custom", "content": {"event": "client_ready"}})
        self.visit.page_open_s = time.monotonic() - started
        return self.visit.page_open_s

    def _handled(self, msg_id: str, what: str) -> list[tuple[tuple, float]]:
        """Every message the kernel sent while handling `msg_id`, up to its idle status, with arrival times."""
        got = []
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._recv(deadline)
            if msg is None:
                raise VisitError(f"no {what} within {self.timeout:.0f} s")
            arrived = time.monotonic()
            if msg[2].get("msg_id") == msg_id:
                got.append((msg, arrived))
                if msg[1].get("msg_type") == "status" and msg[4].get("execution_state") == "idle":
                    return got

    def _first_update(self, handled, comm_id: str, key: str, value=None) -> float | None:
        matches = self._update_of(comm_id, key)
        for msg, arrived in handled:
            if matches(msg) and (value is None or msg[4]["data"]["state"][key] == value):
                return arrived
        return None

    def stroke(self, points) -> float:
        """Draw one stroke at the pointer's pace, send it as the page does at pointer-up; returns ms
        from its end to the prediction shown."""
        self._pump(time.monotonic() + self.move_interval_s * (len(points) - 1))  # the hand drawing it
        up = self._comm(self.models.pad, {"method": "custom", "content": {"event": "stroke", "points": flat(points)}})
        ended = time.monotonic()
        handled = self._handled(up, "prediction")
        shown = self._first_update(handled, self.models.pad, "predicted")
        if shown is None:
            raise VisitError(
                f"no prediction after a stroke: {_text(self._states[self.models.status].get('value', ''))}"
            )
        ms = (shown - ended) * 1000
        self.visit.predict_ms.append(ms)
        return ms

    def draw(self, strokes) -> None:
        for points in strokes:
            self.stroke(points)

    def answer(self, label: int, first_point) -> bool:
        """Click the label's button; True when saved."""
        x, y = first_point
        self.visit.answers_sent.append((int(label), float(x), float(y)))
        clicked = time.monotonic()
        click = self._comm(self.models.labels[int(label)], {"method": "custom", "content": {"event": "click"}})
        handled = self._handled(click, "answer")
        # A stored answer clears the pad: the prompt comes back (the status may repeat the same words).
        cleared = self._first_update(handled, self.models.prediction, "value")
        text = _text(self._states[self.models.status].get("value", ""))
        if cleared is None or "Saved" not in text:
            self.visit.refused.append(text or "no answer")
            return False
        self.visit.save_ms.append((cleared - clicked) * 1000)
        self.visit.saved.append(self.visit.answers_sent[-1])
        return True

    def close(self) -> None:
        """Leave as the page does on unload: the shutdown beacon with the _xsrf cookie, then the socket."""
        if self.kernel_id:
            xsrf = self.http.cookies.get("_xsrf", "")
            try:
                done = self.http.post(
                    urljoin(self.base, f"voila/api/shutdown/{self.kernel_id}"),
                    files={"_xsrf": (None, xsrf)},
                    timeout=self.timeout,
                )
                self.visit.shutdown_status = done.status_code
            except requests.RequestException:
                self.visit.shutdown_status = -1
        if self.ws is not None:
            try:
                self.ws.close(timeout=2)
            except (OSError, websocket.WebSocketException):
                pass
        self.http.close()


def flat(points) -> list[float]:
    """A stroke as the page sends it: x, y clamped to the canvas, 0.1 px, closer points than MIN_STEP skipped."""
    out: list[float] = []
    for x, y in points:
        x, y = (round(min(max(float(v), 0.0), CANVAS_SIZE), 1) for v in (x, y))
        if out and (math.dist(out[-2:], (x, y)) < MIN_STEP or len(out) >= 2 * MAX_STROKE_POINTS):
            continue
        out += [x, y]
    return out


def _text(value: str) -> str:
    return re.sub(r"<[^>]+>", "", value).strip()
