"""The Voilà server under an attacker and a crowd (digitlib/voila_guard.py, installed by voila.json).

The fast tests check the frame checks and the caps' bookkeeping in process. The slow ones start
the real server and talk to it as an outsider does: hostile frames over a real kernel websocket
(websocket-client, v1 subprotocol), page requests from several client addresses behind a
trusted proxy (X-Forwarded-For from loopback), the page's own shutdown beacon request.
"""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import requests
from dashboard_driver import HOSTILE_OFFSETS, KernelSocket, comm_update, stroke_frame, v1_frame
from dashboard_server import running_voila

from digitlib import config
from digitlib.stroke_pad import MAX_STROKE_POINTS
from digitlib.voila_guard import (
    DISCONNECT_GRACE_S,
    MAX_SOCKETS_PER_KERNEL,
    V1,
    Caps,
    FrameError,
    KernelLedger,
    check_frame,
    client_address,
    trusted_proxies,
)

PER_CLIENT = 2


# --- in process -----------------------------------------------------------------------------------


def test_the_16_byte_frame_is_refused_before_anything_is_built():
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(FrameError, match="offsets"):
            check_frame(HOSTILE_OFFSETS, V1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # jupyter_server alone builds a list of 2**28 offsets (GiBs, minutes)


@pytest.mark.parametrize(
    "frame, reason",
    [
        (bytes(4), "shorter"),
        ((6).to_bytes(8, "little") + bytes(8), "longer than the frame"),
        (v1_frame("comm_info_request", {})[:-1], "offsets"),  # cut short: offsets past the end
        (v1_frame("comm_info_request", {}) + b"x", "offsets"),  # bytes the offsets do not cover
        (v1_frame("comm_msg", {}, raw_content=b"[" * 100_000), "frame of"),
        (v1_frame("comm_msg", {}, raw_content=b"[" * 5_000 + b"]" * 5_000), "content"),
        (v1_frame("comm_msg", {}, raw_content=b'{"a": NaN}'), "NaN"),
        (v1_frame("comm_msg", {"comm_id": "x", "data": {"method": "custom", "content": {"x": 1e300}}}), "number"),
        (v1_frame("comm_msg", {"comm_id": "x" * 5000, "data": {"method": "custom"}}), "string"),
        (v1_frame("comm_msg", {"comm_id": "x", "data": {"method": "custom", "content": list(range(2001))}}), "list"),
        (stroke_frame("pad", [140.5] * (2 * MAX_STROKE_POINTS + 2)), "list"),  # longer than the page ever sends
        (v1_frame("execute_request", {"code": "import os"}), "message type"),
        (v1_frame("shutdown_request", {"restart": True}, channel="control"), "message type"),
        (v1_frame("comm_open", {"comm_id": "x", "target_name": "evil", "data": {}}), "target"),
        (v1_frame("comm_info_request", {}, channel="nope"), "channel"),
        (comm_update("canvas", {"width": 1e8, "height": 1e8}), "width"),
        (comm_update("canvas", {"_dom_classes": ["x"]}), "_dom_classes"),
    ],
)
def test_malformed_or_unwanted_frames_are_refused(frame, reason):
    with pytest.raises(FrameError, match=reason):
        check_frame(frame, V1)


def test_the_messages_the_page_sends_pass():
    for frame in [
        v1_frame("kernel_info_request", {}),
        v1_frame("comm_info_request", {"target_name": "jupyter.widget"}),
        v1_frame("comm_open", {"comm_id": "c", "target_name": "jupyter.widget.control", "data": {}}),
        v1_frame("comm_msg", {"comm_id": "c", "data": {"method": "request_states"}}),
        v1_frame("comm_msg", {"comm_id": "c", "data": {"method": "custom", "content": {"event": "click"}}}),
        v1_frame("comm_msg", {"comm_id": "c", "data": {"method": "custom", "content": {"event": "client_ready"}}}),
        stroke_frame("c", [279.9] * (2 * MAX_STROKE_POINTS)),  # the longest stroke the page sends
        v1_frame("comm_close", {"comm_id": "c", "data": {}}),
    ]:
        check_frame(frame, V1)


def test_legacy_protocol_frames_are_checked_too():
    check_frame(json.dumps({"header": {"msg_type": "comm_info_request"}, "content": {}, "channel": "shell"}), None)
    with pytest.raises(FrameError, match="legacy"):
        check_frame(b"\x7f\xff\xff\xff" + bytes(12), None)  # a struct format of 2**31 items, unchecked
    with pytest.raises(FrameError, match="message type"):
        check_frame(json.dumps({"header": {"msg_type": "execute_request"}, "content": {}}), None)
    with pytest.raises(FrameError, match="text frame"):
        check_frame("{}", V1)


def fake_request(remote_ip: str, forwarded: str | None = None):
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return SimpleNamespace(remote_ip=remote_ip, headers=headers)


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(monkeypatch):
    monkeypatch.delenv(config.TRUSTED_PROXIES.name, raising=False)
    proxies = trusted_proxies()
    assert client_address(fake_request("127.0.0.1", "10.0.0.7"), proxies) == "10.0.0.7"
    assert client_address(fake_request("::1", "1.2.3.4, 10.0.0.8"), proxies) == "10.0.0.8"  # the hop Caddy added
    assert client_address(fake_request("203.0.113.5", "10.0.0.7"), proxies) == "203.0.113.5"  # forged: ignored
    assert client_address(fake_request("127.0.0.1", "not-an-address"), proxies) == "127.0.0.1"
    monkeypatch.setenv(config.TRUSTED_PROXIES.name, "172.16.0.0/12")  # a compose network
    assert client_address(fake_request("172.18.0.3", "10.0.0.9"), trusted_proxies()) == "10.0.0.9"
    monkeypatch.setenv(config.TRUSTED_PROXIES.name, "nonsense")
    with pytest.raises(ValueError, match=config.TRUSTED_PROXIES.name):
        trusted_proxies()


def test_caps_count_live_kernels_and_pages_being_served(monkeypatch):
    kernels = {"k1", "k2", "k3"}
    manager = SimpleNamespace(list_kernel_ids=lambda: list(kernels))
    ledger = KernelLedger(Caps(total=4, per_client=2), [])
    ledger.owner = {"k1": "a", "k2": "a", "k3": "b"}
    assert "already have 2" in ledger.refusal("a", manager)
    assert ledger.refusal("b", manager) is None
    ledger.pending["c"] += 1  # a page still taking its kernel counts too
    assert "busy" in ledger.refusal("d", manager)
    kernels.discard("k1")  # shut down or culled: no longer counted
    assert ledger.refusal("a", manager) is None and ledger.refusal("d", manager) is None
    monkeypatch.setenv(config.MAX_KERNELS.name, "zero")
    with pytest.raises(ValueError, match=config.MAX_KERNELS.name):
        Caps.from_settings()


def test_voila_json_installs_the_guard_and_culls_within_minutes():
    voila = json.loads((config.PROJ_ROOT / "voila.json").read_text())
    assert voila["Voila"]["kernel_websocket_connection_class"] == "digitlib.voila_guard.GuardedKernelConnection"
    assert voila["Voila"]["identity_provider_class"] == "digitlib.voila_guard.GuardedIdentityProvider"
    assert voila["VoilaConfiguration"]["multi_kernel_manager_class"] == "digitlib.voila_guard.GuardedKernelManager"
    assert voila["VoilaConfiguration"]["default_pool_size"] == int(config.POOL_SIZE.default)
    culling = voila["MappingKernelManager"]
    assert culling["cull_connected"] is False  # a vanished page's socket is gone; an open page is never culled
    assert culling["cull_idle_timeout"] + culling["cull_interval"] <= 5 * 60


# --- the real server --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    """URL of a running dashboard: pool of one, two kernels per client, culling after 20 s idle."""
    model = tiny_model_dir
    database = tmp_path_factory.mktemp("guard-db") / "feedback.db"
    env = {
        **os.environ,
        config.MODEL_DIR.name: str(model),
        config.DATABASE_URL.name: f"sqlite:///{database}",
        config.POOL_SIZE.name: "1",
        config.MAX_KERNELS_PER_CLIENT.name: str(PER_CLIENT),
    }
    culling = ["--MappingKernelManager.cull_idle_timeout=20", "--MappingKernelManager.cull_interval=2"]
    log = tmp_path_factory.mktemp("guard-log") / "voila.log"
    with running_voila(env, timeout=90, extra_args=culling, log=log) as (port, _):
        url = f"http://127.0.0.1:{port}/"
        open_page(url, "10.99.0.1")  # the first page waits for the pool's first kernel
        yield SimpleNamespace(url=url, log=log)


def open_page(url: str, client: str, timeout: float = 120) -> tuple[requests.Session, str]:
    """(session with its cookies, kernel id) of a dashboard page for `client`, following 'starting' pages."""
    session = requests.Session()
    session.headers["X-Forwarded-For"] = client  # from loopback: the trusted proxy's word
    deadline = time.monotonic() + timeout
    while True:
        reply = session.get(url, timeout=60)
        if reply.status_code == 200:
            return session, re.search(r'"kernelId": *"([^"]+)"', reply.text).group(1)
        assert reply.status_code == 503 and "starting" in reply.text, (reply.status_code, reply.text[:300])
        assert time.monotonic() < deadline, "no kernel within the timeout"
        time.sleep(float(reply.headers["Retry-After"]))


def kernel_alive(url: str, kernel_id: str) -> bool:
    return requests.get(f"{url}api/kernels/{kernel_id}", timeout=10).status_code == 200


def server_answers(url: str) -> bool:
    """The server serves a static file (within requests' timeout) while the attack is under way.

    How fast is benchmarks/voila_attack.py's figure, not a test's."""
    return requests.get(f"{url}voila/static/materialcolors.css", timeout=10).status_code == 200


@pytest.mark.slow
def test_hostile_frames_over_the_real_socket_cost_nothing(server):
    url = server.url
    session, kernel_id = open_page(url, "10.1.0.1")
    sock = KernelSocket(url, kernel_id)
    hostile = [
        HOSTILE_OFFSETS,
        (7).to_bytes(8, "little") + (2**62).to_bytes(8, "little") * 7,
        v1_frame("comm_msg", {}, raw_content=b"[" * 60_000),
        v1_frame("execute_request", {"code": "import os; os._exit(1)"}),
    ]
    for frame in hostile:
        sock.send(frame)
        assert server_answers(url)  # the server keeps answering everyone meanwhile
    info = sock.ask(v1_frame("comm_info_request", {}), lambda t, c: t == "comm_info_reply")
    assert info["comms"]  # the same socket still works: the kernel got nothing it chokes on
    sock.close()
    # A page loads and its kernel answers afterwards.
    second_session, second = open_page(url, "10.1.0.2")
    sock = KernelSocket(url, second)
    assert sock.ask(v1_frame("kernel_info_request", {}), lambda t, c: t == "kernel_info_reply")
    sock.close()
    # Beyond voila.json's websocket_max_message_size tornado closes the socket without buffering it.
    assert frame_closes_the_socket(KernelSocket(url, second), b"\0" * (2 * 2**20))
    assert server_answers(url)
    for client_session, kernel in [(session, kernel_id), (second_session, second)]:
        shut_down(url, client_session, kernel)
    log = server.log.read_text()
    assert re.search(f"dropped a frame on kernel {kernel_id} from [0-9.]+: 268435455 offsets", log)
    assert "message type 'execute_request' is not one the dashboard sends" in log


def socket_when_free(url: str, kernel_id: str, seconds: float = 20) -> KernelSocket:
    import websocket

    deadline = time.monotonic() + seconds
    while True:
        try:
            return KernelSocket(url, kernel_id)
        except websocket.WebSocketBadStatusException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.slow
def test_a_kernel_takes_only_a_few_sockets(server):
    import websocket

    url = server.url
    session, kernel_id = open_page(url, "10.6.0.1")
    sockets = [KernelSocket(url, kernel_id) for _ in range(MAX_SOCKETS_PER_KERNEL)]
    with pytest.raises(websocket.WebSocketBadStatusException, match="503"):
        KernelSocket(url, kernel_id)
    assert sockets[0].ask(v1_frame("kernel_info_request", {}), lambda t, c: t == "kernel_info_reply")  # all open
    sockets.pop().close()
    sockets.append(socket_when_free(url, kernel_id))  # a place again once the server saw the close
    assert server_answers(url)
    for sock in sockets:
        sock.close()
    shut_down(url, session, kernel_id)


def frame_closes_the_socket(sock: KernelSocket, frame: bytes) -> bool:
    import websocket

    try:
        sock.send(frame)
        for _ in range(200):  # status messages may come first; a timeout fails the test
            opcode, _data = sock.ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return True
    except (websocket.WebSocketConnectionClosedException, ConnectionError):
        return True
    return False


def pad_state(sock: KernelSocket, comm_ids) -> tuple[str, dict]:
    """(comm id, state) of the dashboard's drawing pad, asked the way the page's widget manager asks."""
    for comm_id in comm_ids:
        request = v1_frame("comm_msg", {"comm_id": comm_id, "data": {"method": "request_state"}})
        reply = sock.ask(request, lambda t, c, i=comm_id: t == "comm_msg" and c.get("comm_id") == i, seconds=10)
        state = reply["data"]["state"]
        if state.get("_anywidget_id") == "digitlib.stroke_pad.StrokePad":
            return comm_id, state
    raise AssertionError("no drawing pad among the comms")


def open_pad(url: str, client: str):
    session, kernel_id = open_page(url, client)
    sock = KernelSocket(url, kernel_id)
    comms = sock.ask(v1_frame("comm_info_request", {}), lambda t, c: t == "comm_info_reply")["comms"]
    comm_id, state = pad_state(sock, comms)
    return session, kernel_id, sock, comm_id, state


@pytest.mark.slow
def test_a_pad_update_from_the_page_never_reaches_the_kernel(server):
    url = server.url
    session, kernel_id, sock, comm_id, before = open_pad(url, "10.2.0.1")
    sock.send(comm_update(comm_id, {"size": 100_000_000}))
    sock.send(comm_update(comm_id, {"_esm": "export default {render() { fetch('//evil') }}", "predicted": 7}))
    echoes = [c for t, c in sock.replies(2) if c.get("data", {}).get("method") == "echo_update"]
    assert echoes == []  # ipywidgets 8 echoes every update it applies
    _, after = pad_state(sock, [comm_id])
    assert after["size"] == before["size"] == 280 and after["_esm"] == before["_esm"] and after["predicted"] == 0
    sock.close()
    shut_down(url, session, kernel_id)


@pytest.mark.slow
def test_oversized_and_malformed_strokes_are_refused_and_the_pad_goes_on(server):
    url = server.url
    session, kernel_id, sock, pad, _ = open_pad(url, "10.2.0.2")

    def pad_says(event_or_key):
        def wanted(msg_type, content):
            data = content.get("data", {}) if content.get("comm_id") == pad else {}
            return data.get("content", {}).get("event") == event_or_key or event_or_key in data.get("state", {})

        return wanted

    sock.send(stroke_frame(pad, [100.0, 100.0] * (MAX_STROKE_POINTS + 1)))  # the guard drops it
    # Within the guard's bounds but not a stroke: the kernel refuses it and has the page redraw.
    for points in ([1, 2, "x", 4], [1, 2, 3], [[1, 2], [3, 4]], {"x": 1}, -1):
        redraw = sock.ask(stroke_frame(pad, points), pad_says("strokes"))
        assert redraw["data"]["content"]["strokes"] == []
    update = sock.ask(stroke_frame(pad, [60, 50, 220, 50, 120, 240]), pad_says("predicted"))
    assert update["data"]["state"]["predicted"] == 1  # the first stroke to reach the kernel
    sock.close()
    shut_down(url, session, kernel_id)
    assert re.search(
        f"dropped a frame on kernel {kernel_id} from [0-9.]+: content: list of 2002 items", server.log.read_text()
    )


def shut_down(url: str, session: requests.Session, kernel_id: str) -> requests.Response:
    """The request the page sends on unload: a POST with the _xsrf cookie's value as a form field."""
    xsrf = session.cookies.get("_xsrf", "")
    return session.post(f"{url}voila/api/shutdown/{kernel_id}", files={"_xsrf": (None, xsrf)}, timeout=30)


@pytest.mark.slow
def test_per_client_cap_answers_a_busy_page_and_a_shutdown_frees_a_place(server):
    url = server.url
    pages = [open_page(url, "10.3.0.1") for _ in range(PER_CLIENT)]
    sockets = [KernelSocket(url, kernel_id) for _, kernel_id in pages]  # open pages: never culled
    busy = requests.get(url, headers={"X-Forwarded-For": "10.3.0.1"}, timeout=30)
    assert busy.status_code == 503 and int(busy.headers["Retry-After"]) > 0
    assert "already have 2 dashboards open" in busy.text and '<meta http-equiv="refresh"' in busy.text
    # Another visitor is not held back by this one.
    other_session, other_kernel = open_page(url, "10.3.0.2")
    # The page's unload request succeeds with the cookie the page set (it was refused with 403).
    session, kernel_id = pages[0]
    forged = requests.post(f"{url}voila/api/shutdown/{kernel_id}", files={"_xsrf": (None, "forged")}, timeout=30)
    assert forged.status_code == 403 and kernel_alive(url, kernel_id)
    assert shut_down(url, session, kernel_id).status_code == 204
    assert not kernel_alive(url, kernel_id)
    third_session, third_kernel = open_page(url, "10.3.0.1")  # a place again
    for s, k in [pages[1], (other_session, other_kernel), (third_session, third_kernel)]:
        assert shut_down(url, s, k).status_code == 204
    for sock in sockets:
        sock.close()


@pytest.mark.slow
def test_a_crowd_gets_pages_or_a_starting_page_never_a_hang(server):
    url = server.url
    clients = [f"10.4.0.{i}" for i in range(4)]

    def first_answer(client):
        session = requests.Session()
        # Not a hang: a page or the starting page well before a queue of kernel starts could end.
        reply = session.get(url, headers={"X-Forwarded-For": client}, timeout=30)
        return session, reply

    with ThreadPoolExecutor(len(clients)) as pool:
        answers = list(pool.map(first_answer, clients))
    statuses = sorted(reply.status_code for _, reply in answers)
    assert set(statuses) <= {200, 503}, statuses
    for _, reply in answers:
        if reply.status_code == 503:
            assert "starting" in reply.text and reply.headers["Retry-After"] == "2"
        else:
            assert "kernelId" in reply.text
    # Each of them gets the dashboard by following the page's own retry.
    for client in clients:
        session, kernel_id = open_page(url, client)
        shut_down(url, session, kernel_id)
    for session, reply in answers:
        if reply.status_code == 200:
            shut_down(url, session, re.search(r'"kernelId": *"([^"]+)"', reply.text).group(1))


@pytest.mark.slow
def test_kernels_without_a_page_go_away(server):
    url = server.url
    _, vanished = open_page(url, "10.5.0.1")
    sock = KernelSocket(url, vanished)
    sock.close()  # the page went away without its unload request (a crash, a lost network)
    _, never_connected = open_page(url, "10.5.0.2")  # a plain GET, as a script spawning kernels does
    started = time.monotonic()
    gone_after = {}
    while len(gone_after) < 2:
        for kernel_id in (vanished, never_connected):
            if kernel_id not in gone_after and not kernel_alive(url, kernel_id):
                gone_after[kernel_id] = time.monotonic() - started
        assert time.monotonic() - started < 120, f"still running after 2 minutes: {gone_after}"
        time.sleep(1)
    # Shut down DISCONNECT_GRACE_S after its socket closed; the other culled (20 s idle here).
    assert gone_after[vanished] < DISCONNECT_GRACE_S + 10
