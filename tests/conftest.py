"""Shared fixtures: the real MNIST files, the feedback databases, a tiny model, a PostgreSQL of a
module's own. Shared data and plain helpers (SEVEN, make_feedback...) are in tests/helpers.py."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

# Tests share the benchmarks' helpers (benchmarks/dashboard_server.py, voila_client.py...): benchmarks
# run as scripts, so their folder, not a package, is what makes them importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

# Models saved by tests (tiny or random weights) check their ONNX export on the first 1000 images
# of each set, not all 14,657; the committed models/default was checked on everything.
os.environ.setdefault("DIGITLIB_ONNX_CHECK", "1000")

from helpers import PG_URL, train_tiny_model  # noqa: E402
from own_postgres import OwnPostgres  # noqa: E402

from digitlib.dataset import DataError, find_mnist_dir, load_mnist  # noqa: E402
from digitlib.store import FeedbackStore  # noqa: E402


@pytest.fixture(scope="session")
def mnist_dir():
    try:
        return find_mnist_dir(download=False)
    except DataError as e:
        pytest.fail(f"MNIST is needed for these tests: {e}")


@pytest.fixture(scope="session")
def mnist_train(mnist_dir):
    return load_mnist("train", mnist_dir)


@pytest.fixture(scope="session")
def mnist_test(mnist_dir):
    return load_mnist("test", mnist_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny model directory trained once per session (seconds on a CPU); the tests that need a
    model use it, never models/default. Only slow tests may ask for it: it trains."""
    try:
        return train_tiny_model(tmp_path_factory.getbasetemp() / "tiny-model")
    except RuntimeError as e:
        pytest.fail(str(e))


# --- feedback databases ---------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'nested' / 'feedback.db'}"  # the folder does not exist yet


@pytest.fixture
def pg_url():
    """A fresh schema in the test PostgreSQL (TEST_DATABASE_URL) for one test, dropped afterwards.

    In CI (CI=true) a PostgreSQL that cannot be reached fails the test; elsewhere it is skipped.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    admin = create_engine(PG_URL, connect_args={"connect_timeout": 3})
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as c:
            c.execute(text(f'CREATE SCHEMA "{schema}"'))  # a name made here, not input
    except OperationalError as e:
        admin.dispose()
        message = f"PostgreSQL at {make_url(PG_URL).render_as_string()} unreachable: {e.orig}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    # psycopg2 passes `options` to the server: this connection sees only the new schema.
    yield make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
    with admin.begin() as c:
        c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """The feedback store on SQLite and on the real PostgreSQL (a test module may narrow it)."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    s = FeedbackStore(url, queue_file=tmp_path / "queue.jsonl")
    yield s
    s.dispose()


@pytest.fixture(scope="module")
def own_postgres():
    """A PostgreSQL server of the test module's own (tests/own_postgres.py), which its tests may stop
    and restart; removed afterwards."""
    server = OwnPostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()


# --- `make test-fast`: the fast tests train nothing and start no server ----------------------------

# What a process started by a test must not run unless the test is marked slow.
SLOW_COMMANDS = {
    "-m voila": "starts a Voilà server",
    "-m jupyterlab": "starts JupyterLab",
    "jupyter lab": "starts JupyterLab",
    "jupyter-lab": "starts JupyterLab",
    "ipykernel_launcher": "starts a notebook kernel",
    "digitlib.kernel_zygote": "starts the kernel zygote",
    "pg_ctl": "starts a PostgreSQL server",
    "caddy run": "starts Caddy",
    "torch.distributed.run": "trains under torchrun",
    "-m digitlib train": "trains a model",
}


def pytest_addoption(parser):
    parser.addoption(
        "--refuse-slow-work",
        action="store_true",
        help="fail any test not marked slow that trains a model or starts a server (make test-fast uses it)",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not item.config.getoption("--refuse-slow-work") or item.get_closest_marker("slow"):
        yield
        return
    with refusing_slow_work():  # fixtures set up for this test count as the test's work
        yield


@contextmanager
def refusing_slow_work():
    """Within: training a model, or starting a server process, fails the test with the reason."""
    from digitlib.modeling import train as training

    def refuse(what: str):
        pytest.fail(f"this test {what} but is not marked slow: add @pytest.mark.slow", pytrace=False)

    def training_step(*args, **kwargs):
        refuse("trains a model (modeling.train.training_step)")

    popen_init = subprocess.Popen.__init__

    def checked_popen_init(self, args, *rest, **kwargs):
        command = " ".join(map(str, args)) if isinstance(args, list | tuple) else str(args)
        for words, what in SLOW_COMMANDS.items():
            if words in command:
                refuse(f"{what} ({command[:120]})")
        popen_init(self, args, *rest, **kwargs)

    real_step = training.training_step
    training.training_step, subprocess.Popen.__init__ = training_step, checked_popen_init
    try:
        yield
    finally:
        training.training_step, subprocess.Popen.__init__ = real_step, popen_init
