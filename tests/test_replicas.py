"""Two dashboard replicas behind Caddy, as docker-compose.yml runs them, tested without Docker.

Two Voilà servers on two free ports share one PostgreSQL schema; Debian's caddy runs the real
Caddyfile (plain HTTP on a free loopback port, DASHBOARD_UPSTREAMS naming both) in front.
Visitors in Chromium draw and answer through the proxy. Caddy's X-Digitlab-Replica response
header says which replica answered a page; each replica's own log says which kernel websockets it
opened (Caddy 2.6 adds no header to a websocket's 101 answer). Then one replica hangs (SIGSTOP)
and later stops: Caddy's active health check takes it out of the rotation and new visitors, and
the old one's next page, reach the other.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from tiny_model import tiny_model_dir

from digitlib import config
from digitlib.dashboard_server import CHROMIUM, CHROMIUM_ARGS, NOTEBOOK, free_port, stop_group, wait_until_listening

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
CADDY = "/usr/bin/caddy"
CADDYFILE = config.PROJ_ROOT / "Caddyfile"
REPLICA_HEADER = "x-digitlab-replica"
HEALTH_URI = "/voila/static/materialcolors.css"  # the Caddyfile's health_uri (tests/test_deploy.py checks it)
HEALTH_INTERVAL_S = 5  # the Caddyfile's health_interval
A_SEVEN = [(60, 50), (220, 50), (120, 240)]  # canvas pixels


@pytest.fixture(scope="module")
def database_url():
    """A fresh schema in the test PostgreSQL, migrated as compose's migrate service does; dropped after."""
    admin = create_engine(PG_URL, connect_args={"connect_timeout": 3})
    schema = f"replicas_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as c:
            c.execute(text(f'CREATE SCHEMA "{schema}"'))  # a name made here, not input
    except OperationalError as e:
        admin.dispose()
        message = f"PostgreSQL at {make_url(PG_URL).render_as_string()} unreachable: {e.orig}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
    migrate = [sys.executable, "-m", "digitlib.migrations", "upgrade", "--url", url]
    done = subprocess.run(migrate, cwd=config.PROJ_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    yield url
    with admin.begin() as c:
        c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def start_replica(port: int, env: dict, log: Path) -> subprocess.Popen:
    """A Voilà server as digitlib.dashboard_server starts one, its log kept (the replica's own record)."""
    command = [sys.executable, "-m", "voila", str(NOTEBOOK), f"--port={port}", "--no-browser", "--pool_size=1"]
    with log.open("wb") as out:
        return subprocess.Popen(
            command, cwd=config.PROJ_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory, database_url):
    """{"url": the proxy, "replicas": {"127.0.0.1:port": process}, "logs": {upstream: Path}, "caddy_log": Path}."""
    if not Path(CADDY).is_file():
        pytest.fail(f"{CADDY} is missing: `make caddy` installs Debian's caddy")
    model = tiny_model_dir(tmp_path_factory)
    env = {**os.environ, config.MODEL_DIR.name: str(model), config.DATABASE_URL.name: database_url}
    replicas: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    caddy = None
    folder = tmp_path_factory.mktemp("caddy")
    try:
        for i in range(2):
            port = free_port()
            upstream = f"127.0.0.1:{port}"
            logs[upstream] = folder / f"replica-{i}.log"
            replicas[upstream] = start_replica(port, env, logs[upstream])
        for upstream, process in replicas.items():
            wait_until_listening(int(upstream.rsplit(":", 1)[1]), process, timeout=120)
        proxy_port = free_port()
        caddy_env = {
            "PATH": os.environ["PATH"],
            # Caddy keeps its state (a local CA, were it asked for one) here, not in ~/.local.
            "HOME": str(folder),
            "XDG_DATA_HOME": str(folder / "data"),
            "XDG_CONFIG_HOME": str(folder / "config"),
            "SITE_ADDRESS": f"http://127.0.0.1:{proxy_port}",
            "LAB_ADDRESS": f"http://127.0.0.1:{free_port()}",
            "CADDY_ADMIN": f"127.0.0.1:{free_port()}",
            "DASHBOARD_UPSTREAMS": " ".join(replicas),
        }
        caddy_log = folder / "caddy.log"
        with caddy_log.open("wb") as log:
            caddy = subprocess.Popen(
                [CADDY, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
                env=caddy_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{proxy_port}"
        wait_for_replicas(url, set(replicas), caddy)
        yield {"url": url, "replicas": replicas, "logs": logs, "caddy_log": caddy_log}
    finally:
        if caddy is not None:
            stop_group(caddy)
        for process in replicas.values():
            try:
                os.kill(process.pid, signal.SIGCONT)  # a replica the test froze must run to stop
            except ProcessLookupError:
                pass
            stop_group(process)


def probe(url: str, timeout: float = 5) -> tuple[int, str]:
    """(status, replica) of a new visitor's request through the proxy, for the health file: no kernel starts."""
    try:
        with urllib.request.urlopen(url + HEALTH_URI, timeout=timeout) as response:
            return response.status, response.headers.get(REPLICA_HEADER, "")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get(REPLICA_HEADER, "")


def wait_for_replicas(url: str, expected: set[str], caddy: subprocess.Popen, timeout: float = 60) -> None:
    """Until cookie-less requests through the proxy have reached every replica."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and seen != expected:
        if caddy.poll() is not None:
            raise RuntimeError(f"caddy exited with code {caddy.returncode}")
        try:
            status, replica = probe(url, timeout=3)
            if status == 200:
                seen.add(replica)
        except OSError:
            pass
        time.sleep(0.2)
    assert seen == expected, f"the proxy reached {seen}, not {expected}"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs Debian's Chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Visitor:
    """One person in their own browser context (own cookies)."""

    def __init__(self, browser, url: str):
        self.url = url
        self.context = browser.new_context(viewport={"width": 1000, "height": 800})
        self.page = self.context.new_page()

    def first_request(self) -> str:
        """The replica Caddy places this new visitor on (its sticky cookie is now set)."""
        response = self.context.request.get(self.url + HEALTH_URI)
        assert response.ok, response.status
        return response.headers[REPLICA_HEADER]

    def open(self) -> str:
        """Load the dashboard through the proxy; the replica that served the page."""
        response = self.page.goto(self.url + "/", timeout=120_000)  # Voilà holds it until the kernel ran the notebook
        assert response.ok, response.status
        self.page.locator(".digit-canvas").wait_for(state="visible", timeout=60_000)
        return response.headers[REPLICA_HEADER]

    def kernel_id(self) -> str:
        return self.page.evaluate(
            "() => JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId"
        )

    def draw_and_answer(self, label: int) -> None:
        """Draw a seven, wait for the prediction (it comes over the kernel's websocket), answer `label`."""
        box = self.page.locator(".digit-canvas").bounding_box()
        scale = box["width"] / 280
        x, y = A_SEVEN[0]
        self.page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
        self.page.mouse.down()
        for x, y in A_SEVEN[1:]:
            self.page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=15)
        self.page.mouse.up()
        wait_for_text(self.page, ".digit-prediction", r"^[0-9]$")
        self.page.locator(f".digit-label-{label}").click()
        assert f"Saved as {label}" in wait_for_text(self.page, ".digit-status", "Saved")

    def close(self) -> None:
        self.context.close()


def wait_for_text(page, selector: str, pattern: str, timeout_ms: int = 30_000) -> str:
    page.wait_for_function(
        "([sel, pat]) => { const e = document.querySelector(sel);"
        " return e && new RegExp(pat).test(e.innerText.trim()); }",
        arg=[selector, pattern],
        timeout=timeout_ms,
    )
    return page.locator(selector).inner_text().strip()


def visitor_on(browser, url: str, replica: str | None, attempts: int = 40) -> Visitor:
    """A new visitor whom Caddy placed on `replica` (fresh ones until one lands there; None: any)."""
    for _ in range(attempts):
        visitor = Visitor(browser, url)
        if replica is None or visitor.first_request() == replica:
            return visitor
        visitor.close()
    pytest.fail(f"{attempts} new visitors and none placed on {replica}")


def active_check_failures(log: Path, offset: int, upstream: str) -> list[dict]:
    """Caddy's log entries, after byte `offset`, of its active health check failing `upstream`."""
    with log.open("rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    return [
        e
        for e in entries
        if e.get("logger", "").endswith("health_checker.active")
        and e.get("host") == upstream
        and e.get("msg") != "host is up"
    ]


def websockets_opened(logs: dict[str, Path], kernel: str) -> set[str]:
    """The replicas whose log shows a websocket opened to `kernel` (jupyter_server logs each)."""
    return {upstream for upstream, log in logs.items() if f"Connecting to kernel {kernel}." in log.read_text()}


def labels_stored(database_url: str) -> list[int]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as c:
            return sorted(c.execute(text("SELECT true_label FROM prediction_logs")).scalars())
    finally:
        engine.dispose()


def test_each_visitor_stays_on_one_replica_and_both_store_in_one_database(stack, browser, database_url):
    url, replicas, logs = stack["url"], list(stack["replicas"]), stack["logs"]
    answers = {}
    for replica, label in zip(replicas, (7, 3), strict=True):
        visitor = visitor_on(browser, url, replica)
        try:
            assert visitor.open() == replica  # the page follows the sticky cookie
            visitor.draw_and_answer(label)
            # The kernel's websocket went to the replica that served the page, and only there.
            assert websockets_opened(logs, visitor.kernel_id()) == {replica}
            for _ in range(5):
                assert visitor.first_request() == replica  # and later requests too
        finally:
            visitor.close()
        answers[replica] = label
    # Both replicas wrote into the one database: each visitor's answer, once.
    assert labels_stored(database_url) == sorted(answers.values())


def test_a_hung_or_stopped_replica_leaves_the_rotation(stack, browser, database_url):
    url, replicas, log = stack["url"], stack["replicas"], stack["caddy_log"]
    gone, kept = list(replicas)
    before = len(labels_stored(database_url))
    # A visitor whose cookie pins them to the replica about to go.
    regular = visitor_on(browser, url, gone)
    try:
        # Hung: the server accepts connections but answers nothing. Only an active check with a
        # timeout notices; until it does a request there would wait.
        logged = log.stat().st_size
        os.kill(replicas[gone].pid, signal.SIGSTOP)
        deadline = time.monotonic() + 4 * HEALTH_INTERVAL_S
        while not active_check_failures(log, logged, gone):
            assert time.monotonic() < deadline, f"Caddy's active check never failed {gone}:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        # New visitors all reach the other replica, promptly (none waits on the hung one).
        for _ in range(10):
            status, replica = probe(url, timeout=5)
            assert (status, replica) == (200, kept)
        # Stopped for good: still out of the rotation; the regular visitor's next page moves over.
        os.kill(replicas[gone].pid, signal.SIGCONT)
        stop_group(replicas[gone])
        time.sleep(HEALTH_INTERVAL_S + 1)
        for _ in range(10):
            status, replica = probe(url, timeout=5)
            assert (status, replica) == (200, kept)
        assert regular.open() == kept
        regular.draw_and_answer(5)
        assert websockets_opened(stack["logs"], regular.kernel_id()) == {kept}
    finally:
        regular.close()
    assert len(labels_stored(database_url)) == before + 1 and 5 in labels_stored(database_url)
