"""The Voilà server's guard against a crowd and an attacker, installed by voila.json.

- `GuardedKernelConnection` (Voila.kernel_websocket_connection_class) checks every frame a
  browser sends on a kernel's websocket before jupyter_server parses it: v1 offsets against the
  frame's length, sizes, JSON depth and lengths, and only the comm messages the dashboard needs.
  jupyter_server 2.21.1 builds one offset per count the frame claims (2**28 for `ff ff ff 0f`),
  so a 16-byte frame would stop the server; here it is dropped and logged. It also allows a few
  sockets per kernel and shuts a kernel down once its page's socket has been gone a while.
- `GuardedIdentityProvider` (Voila.identity_provider_class) is Voilà's default identity provider
  plus the page route: `GuardedPageHandler` caps kernels in total and per client address (HTTP
  503 with Retry-After beyond them), waits briefly for a preheated kernel or answers a page that
  says it is starting, and sets the `_xsrf` cookie the page's unload beacon needs to shut its
  kernel down. The identity provider is the one configurable class whose handlers Voilà routes.
- `GuardedKernelManager` (VoilaConfiguration.multi_kernel_manager_class) takes the preheated pool
  size from DIGITLIB_POOL_SIZE and starts the kernel zygote (digitlib.kernel_zygote): its
  `ZygoteKernelManager`s start each kernel as a fork of it (DIGITLIB_KERNEL_ZYGOTE=0: cold).
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass

import tornado.web
from jupyter_server.auth.identity import PasswordIdentityProvider
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager, ServerKernelManager
from jupyter_server.utils import url_path_join
from tornado.ioloop import IOLoop
from traitlets import default
from voila.tornado.handler import TornadoVoilaHandler

from digitlib import config, kernel_zygote

V1 = "v1.kernel.websocket.jupyter.org"

# --- frame and message bounds ---------------------------------------------------------------------
MAX_FRAME_BYTES = 64 * 1024  # the dashboard's largest message, a 1,000-point stroke, is ~14 KiB
MAX_PARTS = 4  # header, parent_header, metadata, content: the page sends no binary buffers
MAX_DEPTH = 8
MAX_STRING = 4096
MAX_LIST = 2_000  # a stroke is one flat list: x, y of at most stroke_pad.MAX_STROKE_POINTS points
MAX_KEYS = 64
MAX_NUMBER = 1e9
MAX_BAD_FRAMES = 20  # then the socket is closed: no browser of ours sends one
MAX_SOCKETS_PER_KERNEL = 4
CHANNELS = {"shell", "control", "iopub", "stdin"}
# What the dashboard's page sends (Voilà allows shutdown_request too; its page uses an HTTP beacon).
MESSAGE_TYPES = {"comm_open", "comm_close", "comm_msg", "comm_info_request", "kernel_info_request"}
COMM_TARGETS = {"jupyter.widget.control", "jupyter.widget"}
COMM_METHODS = {"custom", "request_state", "request_states", "update"}
# Widget state a browser may set on a comm 'update': none of the dashboard's widgets take input by
# state (the canvas and buttons send events), so width, height and anything else are refused.
UPDATE_KEYS: frozenset[str] = frozenset()


class FrameError(ValueError):
    """A websocket frame the guard refuses (the reason is logged)."""


def parse_v1_frame(frame: bytes) -> tuple[str, list[bytes]]:
    """(channel, message parts) of a v1 frame, checked before anything proportional is built."""
    size = len(frame)
    if size > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {size} bytes (at most {MAX_FRAME_BYTES})")
    if size < 8:
        raise FrameError("frame shorter than its offsets count")
    count = int.from_bytes(frame[:8], "little")
    # Offsets: channel start, channel end / header start, then the end of each message part.
    if not 2 + 4 <= count <= 2 + MAX_PARTS:
        raise FrameError(f"{count} offsets (a message has {2 + 4} to {2 + MAX_PARTS})")
    table_end = 8 * (count + 1)
    if table_end > size:
        raise FrameError("offsets table longer than the frame")
    offsets = [int.from_bytes(frame[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(count)]
    if offsets[0] != table_end or offsets[-1] != size or any(a > b for a, b in zip(offsets, offsets[1:], strict=False)):
        raise FrameError("offsets out of order or not matching the frame's length")
    try:
        channel = frame[offsets[0] : offsets[1]].decode("ascii")
    except UnicodeDecodeError:
        raise FrameError("channel name is not ASCII") from None
    parts = [frame[offsets[i] : offsets[i + 1]] for i in range(1, count - 1)]
    return channel, parts


def _reject_constant(name: str) -> float:
    raise FrameError(f"JSON constant {name} (NaN and infinities are refused)")


def load_json(data: bytes | str, what: str) -> object:
    """JSON from a checked frame; numbers finite and bounded, depth and lengths bounded."""
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except FrameError:
        raise
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise FrameError(f"{what} is not JSON ({type(e).__name__})") from None
    check_bounds(value, what)
    return value


def check_bounds(value: object, what: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise FrameError(f"{what} nested deeper than {MAX_DEPTH}")
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise FrameError(f"{what}: string of {len(value)} characters (at most {MAX_STRING})")
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, (int, float)):
        if not (math.isfinite(value) and abs(value) <= MAX_NUMBER):
            raise FrameError(f"{what}: number out of range")
    elif isinstance(value, list):
        if len(value) > MAX_LIST:
            raise FrameError(f"{what}: list of {len(value)} items (at most {MAX_LIST})")
        for item in value:
            check_bounds(item, what, depth + 1)
    elif isinstance(value, dict):
        if len(value) > MAX_KEYS:
            raise FrameError(f"{what}: object of {len(value)} keys (at most {MAX_KEYS})")
        for key, item in value.items():
            check_bounds(key, what, depth + 1)
            check_bounds(item, what, depth + 1)
    else:  # pragma: no cover - json.loads makes nothing else
        raise FrameError(f"{what}: unexpected {type(value).__name__}")


def check_message(channel: str, header: object, content: object) -> None:
    """Only the messages the dashboard's page sends, with widget state updates refused."""
    if channel not in CHANNELS:
        raise FrameError(f"unknown channel {channel[:40]!r}")
    if not isinstance(header, dict) or not isinstance(content, dict):
        raise FrameError("header or content is not an object")
    msg_type = header.get("msg_type")
    if msg_type not in MESSAGE_TYPES:
        raise FrameError(f"message type {str(msg_type)[:40]!r} is not one the dashboard sends")
    if msg_type == "comm_open" and content.get("target_name") not in COMM_TARGETS:
        raise FrameError(f"comm_open for target {str(content.get('target_name'))[:40]!r}")
    if msg_type == "comm_msg":
        data = content.get("data")
        if not isinstance(data, dict) or data.get("method") not in COMM_METHODS:
            raise FrameError("comm_msg without a known widget method")
        if data["method"] == "update":
            state = data.get("state")
            if not isinstance(state, dict):
                raise FrameError("widget update without a state object")
            refused = sorted(set(state) - UPDATE_KEYS)
            if refused:
                raise FrameError(f"widget update of {', '.join(k[:40] for k in refused[:5])} refused")
            if data.get("buffer_paths"):
                raise FrameError("widget update with binary buffers refused")


def check_frame(frame: bytes | str, subprotocol: str | None) -> None:
    """Raise FrameError unless `frame` is a message the dashboard's page could have sent."""
    if isinstance(frame, str):
        if len(frame) > MAX_FRAME_BYTES:
            raise FrameError(f"frame of {len(frame)} characters (at most {MAX_FRAME_BYTES})")
        if subprotocol == V1:
            raise FrameError("text frame on the v1 protocol")
        msg = load_json(frame, "message")
        if not isinstance(msg, dict):
            raise FrameError("message is not an object")
        check_message(msg.get("channel") or "shell", msg.get("header"), msg.get("content"))
        if msg.get("buffers"):
            raise FrameError("binary buffers refused")
        return
    if subprotocol != V1:
        # jupyter_server's legacy binary format packs a struct format of as many items as the
        # frame claims; the page never sends it.
        raise FrameError("binary frame on the legacy protocol")
    channel, parts = parse_v1_frame(frame)
    header, _parent, _metadata, content = (load_json(p, name) for p, name in zip(parts, PART_NAMES, strict=True))
    check_message(channel, header, content)


PART_NAMES = ("header", "parent_header", "metadata", "content")


# A page's kernel whose last websocket closed is shut down after this grace (a reload or a network
# blip reconnects within it). The page's unload beacon does it at once; this also covers the pages
# that never send it (a crash, a lost network, a browser skipping beforeunload).
DISCONNECT_GRACE_S = 15.0


async def shut_down_if_abandoned(manager, kernel_id: str, log) -> None:
    if kernel_id in manager and manager._kernel_connections.get(kernel_id, 0) == 0:
        log.info("digitlib guard: shutting down kernel %s, its page is gone", kernel_id)
        try:
            await manager.shutdown_kernel(kernel_id)
        except Exception as e:  # already gone (the beacon came first): nothing to do
            log.debug("kernel %s: %s", kernel_id, e)


class GuardedKernelConnection(ZMQChannelsWebsocketConnection):
    """A kernel websocket connection that drops (and logs) every frame `check_frame` refuses,
    and shuts its kernel down once no page is connected to it for `DISCONNECT_GRACE_S`."""

    bad_frames = 0

    async def prepare(self):
        # Each socket holds ZMQ sockets (file descriptors): a page needs one, a reload briefly two.
        if self.multi_kernel_manager._kernel_connections.get(self.kernel_id, 0) >= MAX_SOCKETS_PER_KERNEL:
            self.log.warning(
                "digitlib guard: refused socket %d on kernel %s", MAX_SOCKETS_PER_KERNEL + 1, self.kernel_id
            )
            raise tornado.web.HTTPError(503, "too many connections to this kernel")
        await super().prepare()

    def disconnect(self):
        manager, kernel_id = self.multi_kernel_manager, self.kernel_id
        result = super().disconnect()
        IOLoop.current().call_later(DISCONNECT_GRACE_S, shut_down_if_abandoned, manager, kernel_id, self.log)
        return result

    def handle_incoming_message(self, incoming_msg) -> None:
        try:
            check_frame(incoming_msg, self.subprotocol)
        except FrameError as e:
            self.bad_frames += 1
            handler = self.websocket_handler
            self.log.warning(
                "digitlib guard dropped a frame on kernel %s from %s: %s",
                self.kernel_id,
                client_address(handler.request, trusted_proxies()),
                e,
            )
            if self.bad_frames >= MAX_BAD_FRAMES:
                handler.close(1008, "malformed frames")
            return
        super().handle_incoming_message(incoming_msg)


# --- kernel caps, the starting page and the xsrf cookie ------------------------------------------


def int_setting(setting: config.Setting, low: int, high: int) -> int:
    raw = setting.get()
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ValueError(f"{setting.name} must be a whole number from {low} to {high}, not {raw!r}")
    return value


def trusted_proxies() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        return [ipaddress.ip_network(part.strip(), strict=False) for part in config.TRUSTED_PROXIES.get().split(",")]
    except ValueError as e:
        raise ValueError(f"{config.TRUSTED_PROXIES.name}: {e}") from None


def client_address(request, proxies) -> str:
    """The visitor's address: X-Forwarded-For's last hop only when the request came from a trusted proxy."""
    remote = request.remote_ip or ""
    forwarded = request.headers.get("X-Forwarded-For", "")
    try:
        from_proxy = any(ipaddress.ip_address(remote) in net for net in proxies)
    except ValueError:
        from_proxy = False
    if from_proxy and forwarded.strip():
        last = forwarded.split(",")[-1].strip()  # the hop the proxy itself added
        try:
            return str(ipaddress.ip_address(last))
        except ValueError:
            pass
    return remote


@dataclass
class Caps:
    total: int
    per_client: int
    start_wait_s: float = 5.0
    retry_after_s: int = 10
    starting_retry_s: int = 2

    @classmethod
    def from_settings(cls) -> Caps:
        return cls(
            total=int_setting(config.MAX_KERNELS, 1, 10_000),
            per_client=int_setting(config.MAX_KERNELS_PER_CLIENT, 1, 10_000),
        )


class KernelLedger:
    """Which client each visitor kernel belongs to, plus page requests still taking one."""

    def __init__(self, caps: Caps, proxies) -> None:
        self.caps = caps
        self.proxies = proxies
        self.owner: dict[str, str] = {}
        self.pending: Counter[str] = Counter()

    def prune(self, kernel_manager) -> None:
        alive = set(kernel_manager.list_kernel_ids())
        self.owner = {k: c for k, c in self.owner.items() if k in alive}

    def refusal(self, client: str, kernel_manager) -> str | None:
        """Why a new page for `client` is refused now, or None."""
        self.prune(kernel_manager)
        total = len(self.owner) + sum(self.pending.values())
        mine = sum(1 for c in self.owner.values() if c == client) + self.pending[client]
        if mine >= self.caps.per_client:
            return f"You already have {mine} dashboards open. Close one, or try again in a moment."
        if total >= self.caps.total:
            return "The dashboard is busy with other visitors. Please try again in a moment."
        return None


MESSAGE_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{retry}">
<title>Digit Lab</title>
<style>body {{ font-family: sans-serif; margin: 15vh auto; max-width: 36em; text-align: center; color: #333; }}</style>
</head><body><h2>{title}</h2><p>{text}</p>
<p><small>This page tries again by itself in {retry} s.</small></p></body></html>
"""


class GuardedPageHandler(TornadoVoilaHandler):
    """Voilà's page, behind the kernel caps; notes which client each kernel went to."""

    @property
    def kernel_manager(self):
        manager = self.settings["kernel_manager"]
        if getattr(self, "_recording", None) is None:
            self._recording = _RecordingKernelManager(manager, self)
        return self._recording

    @property
    def ledger(self) -> KernelLedger:
        return self.identity_provider.ledger

    def message_page(self, status: int, title: str, text: str, retry: int) -> None:
        self.clear()
        self.set_status(status)
        self.set_header("Retry-After", str(retry))
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(MESSAGE_PAGE.format(title=html.escape(title), text=html.escape(text), retry=retry))

    @tornado.web.authenticated
    async def get(self, path=None):
        ledger = self.ledger
        manager = self.settings["kernel_manager"]
        self.client = client_address(self.request, ledger.proxies)
        refusal = ledger.refusal(self.client, manager)
        if refusal:
            self.log.warning("digitlib guard: busy page for %s (%s)", self.client, refusal)
            return self.message_page(503, "Busy", refusal, ledger.caps.retry_after_s)
        ledger.pending[self.client] += 1
        try:
            if not await self.preheated_kernel_ready(manager, ledger.caps.start_wait_s):
                return self.message_page(
                    503,
                    "Starting",
                    "Your dashboard is starting: visitors arrived faster than kernels start.",
                    ledger.caps.starting_retry_s,
                )
            _ = self.xsrf_token  # sets the _xsrf cookie that the page's unload beacon sends back
            await super().get(path)
        finally:
            ledger.pending[self.client] -= 1
            if ledger.pending[self.client] <= 0:
                del ledger.pending[self.client]

    async def preheated_kernel_ready(self, manager, wait_s: float) -> bool:
        """True once a preheated kernel is ready (or there is no pool); waits at most `wait_s`.

        Voilà takes the pool's first entry and waits for it, so a ready one is moved to the front;
        nothing awaits between this and Voilà taking it.
        """
        pools = getattr(manager, "_pools", None)
        if not pools or not manager.get_pool_size(self.notebook_path):
            return True  # no pool: Voilà starts a kernel and streams the page with its spinner
        deadline = time.monotonic() + wait_s
        while True:
            pool = pools.get(self.notebook_path, [])
            failed = [t for t in pool if t.done() and (t.cancelled() or t.exception() is not None)]
            if failed:  # a kernel that failed to start would hold its place in the pool for ever
                for task in failed:
                    pool.remove(task)
                manager.fill_if_needed(notebook_name=self.notebook_path)
            ready = [t for t in pool if t.done()]
            if ready:
                pool.sort(key=lambda t: t is not ready[0])  # stable: the ready kernel first
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)


class _RecordingKernelManager:
    """The kernel manager as one page handler sees it: the kernel it gets is recorded for its client."""

    def __init__(self, manager, handler: GuardedPageHandler) -> None:
        self._manager = manager
        self._handler = handler

    def __getattr__(self, name):
        return getattr(self._manager, name)

    def __contains__(self, kernel_id) -> bool:
        return kernel_id in self._manager

    def _record(self, kernel_id: str) -> None:
        self._handler.ledger.owner[kernel_id] = self._handler.client

    async def get_rendered_notebook(self, *args, **kwargs):
        render_task, rendered_cache, kernel_id = await self._manager.get_rendered_notebook(*args, **kwargs)
        self._record(kernel_id)
        return render_task, rendered_cache, kernel_id

    async def start_kernel(self, *args, **kwargs):
        kernel_id = await self._manager.start_kernel(*args, **kwargs)
        self._record(kernel_id)
        return kernel_id


class GuardedIdentityProvider(PasswordIdentityProvider):
    """Voilà's default identity provider, plus the guarded page route and the caps' ledger.

    Voilà adds an identity provider's handlers before its catch-all notebook route, so the
    notebook's page `/` reaches `GuardedPageHandler` first.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ledger = KernelLedger(Caps.from_settings(), trusted_proxies())  # bad settings fail at start

    def get_handlers(self):
        handlers = list(super().get_handlers())
        app = self.parent
        notebook_path = getattr(app, "notebook_path", None)
        if notebook_path:
            handlers.append(
                (
                    url_path_join(app.server_url or app.base_url, "/"),
                    GuardedPageHandler,
                    {
                        "notebook_path": os.path.relpath(notebook_path, app.root_dir),
                        "template_paths": app.template_paths,
                        "config": app.config,
                        "voila_configuration": app.voila_configuration,
                    },
                )
            )
        return handlers


class ZygoteKernelManager(ServerKernelManager):
    """One kernel: started as a fork of its parent manager's zygote when there is one."""

    def format_kernel_cmd(self, extra_arguments=None) -> list[str]:
        cmd = super().format_kernel_cmd(extra_arguments)
        zygote = getattr(self.parent, "zygote", None)
        return zygote.command(cmd) if zygote is not None else cmd


class GuardedKernelManager(AsyncMappingKernelManager):
    """Voilà's kernel manager base with the preheated pool size from DIGITLIB_POOL_SIZE and
    kernels forked from a zygote (DIGITLIB_KERNEL_ZYGOTE)."""

    zygote: kernel_zygote.Zygote | None = None

    @default("kernel_manager_class")
    def _default_kernel_manager_class(self):
        return "digitlib.voila_guard.ZygoteKernelManager"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if kernel_zygote.enabled():
            self.zygote = self._start_zygote()
        if os.environ.get(config.POOL_SIZE.name) and self.has_trait("kernel_pools_config"):
            size = int_setting(config.POOL_SIZE, 0, 64)
            self.kernel_pools_config = {
                "default": {"pool_size": size, "kernel_env_variables": self.default_env_variables}
            }

    def _start_zygote(self) -> kernel_zygote.Zygote | None:
        """The zygote for the default kernel's interpreter, or None (every kernel then starts cold)."""
        try:
            argv = self.kernel_spec_manager.get_kernel_spec(self.default_kernel_name).argv
            python = kernel_zygote.python_of(argv)
            if not python:
                self.log.warning("digitlib: kernel %s is not ipykernel_launcher, no zygote", self.default_kernel_name)
                return None
            if python[0] in {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}:
                python[0] = sys.executable  # as jupyter_client's format_kernel_cmd does
            return kernel_zygote.Zygote(python)
        except Exception as e:  # noqa: BLE001 - kernels still start, cold
            self.log.warning("digitlib: no kernel zygote (%s), kernels start cold", e)
            return None
