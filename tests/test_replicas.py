"""Two dashboard replicas behind Caddy, as docker-compose.yml runs them, tested without Docker.

Two Voilà servers on two free ports share one PostgreSQL schema; Debian's caddy runs the real
Caddyfile (plain HTTP on a free loopback port, DASHBOARD_UPSTREAMS naming both) in front
(benchmarks/replicas.py starts them). Visitors in Chromium draw and answer through the proxy.
Caddy's X-Digitlab-Replica response header says which replica answered a page; each replica's
own log says which kernel websockets it opened (Caddy 2.6 adds no header to a websocket's 101
answer). Then one replica hangs (SIGSTOP) and later stops: Caddy's active health check takes it
out of the rotation and new visitors, and the old one's next page, reach the other.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import replicas as replica_stack  # benchmarks/replicas.py: the stack both start
from dashboard_driver import draw_in_page
from dashboard_driver import wait_for_text as wait_for_text_within
from dashboard_server import CHROMIUM, CHROMIUM_ARGS, stop_group
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from digitlib import config

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
REPLICA_HEADER = replica_stack.REPLICA_HEADER.lower()  # Playwright's header names
HEALTH_URI = replica_stack.HEALTH_URI
HEALTH_INTERVAL_S = 5  # the Caddyfile's health_interval
A_SEVEN = [(60, 50), (220, 50), (120, 240)]  # canvas pixels


@pytest.fixture(scope="module")
def database_url():
    """A fresh schema in the test PostgreSQL, migrated as compose's migrate service does; dropped after."""
    admin = create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        admin.connect().close()
    except OperationalError as e:
        message = f"PostgreSQL at {make_url(PG_URL).render_as_string()} unreachable: {e.orig}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    finally:
        admin.dispose()
    with replica_stack.fresh_schema(PG_URL) as url:
        yield url


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir, database_url):
    """Two replicas on the one database behind caddy; all stopped afterwards."""
    if not Path(replica_stack.CADDY).is_file():
        pytest.fail(f"{replica_stack.CADDY} is missing: `make caddy` installs Debian's caddy")
    model = tiny_model_dir
    env = {**os.environ, config.MODEL_DIR.name: str(model), config.DATABASE_URL.name: database_url}
    with replica_stack.running_replicas(env, tmp_path_factory.mktemp("replicas"), count=2) as stack:
        yield stack


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
        """Draw a seven, wait for the answer (it comes over the kernel's websocket), then answer `label`."""
        draw_in_page(self.page, [A_SEVEN])
        wait_for_text(self.page, ".digit-prediction", r"^([0-9]$|Not a digit)")  # a model may reject it
        self.page.locator(f".digit-label-{label}").click()
        assert f"Saved as {label}" in wait_for_text(self.page, ".digit-status", "Saved")

    def close(self) -> None:
        self.context.close()


def wait_for_text(page, selector: str, pattern: str) -> str:
    return wait_for_text_within(page, selector, pattern, timeout_ms=30_000)  # through the proxy: slower


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


def opened_on(stack, kernel: str) -> set[str]:
    """The replicas whose own log shows a websocket opened to `kernel`."""
    return {upstream for upstream, kernels in stack.kernels_opened().items() if kernel in kernels}


def labels_stored(database_url: str) -> list[int]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as c:
            return sorted(c.execute(text("SELECT true_label FROM prediction_logs")).scalars())
    finally:
        engine.dispose()


def test_each_visitor_stays_on_one_replica_and_both_store_in_one_database(stack, browser, database_url):
    url, replicas = stack.url, list(stack.replicas)
    answers = {}
    for replica, label in zip(replicas, (7, 3), strict=True):
        visitor = visitor_on(browser, url, replica)
        try:
            assert visitor.open() == replica  # the page follows the sticky cookie
            visitor.draw_and_answer(label)
            # The kernel's websocket went to the replica that served the page, and only there.
            assert opened_on(stack, visitor.kernel_id()) == {replica}
            for _ in range(5):
                assert visitor.first_request() == replica  # and later requests too
        finally:
            visitor.close()
        answers[replica] = label
    # Both replicas wrote into the one database: each visitor's answer, once.
    assert labels_stored(database_url) == sorted(answers.values())


def test_a_hung_or_stopped_replica_leaves_the_rotation(stack, browser, database_url):
    url, replicas, log = stack.url, stack.replicas, stack.caddy_log
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
            status, replica = replica_stack.probe(url, timeout=5)
            assert (status, replica) == (200, kept)
        # Stopped for good: still out of the rotation; the regular visitor's next page moves over.
        os.kill(replicas[gone].pid, signal.SIGCONT)
        stop_group(replicas[gone])
        logged = log.stat().st_size
        deadline = time.monotonic() + 4 * HEALTH_INTERVAL_S
        while not active_check_failures(log, logged, gone):  # Caddy has seen it stopped
            assert time.monotonic() < deadline, f"no failed check of the stopped {gone}:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        for _ in range(10):
            status, replica = replica_stack.probe(url, timeout=5)
            assert (status, replica) == (200, kept)
        assert regular.open() == kept
        regular.draw_and_answer(5)
        assert opened_on(stack, regular.kernel_id()) == {kept}
    finally:
        regular.close()
    assert len(labels_stored(database_url)) == before + 1 and 5 in labels_stored(database_url)
