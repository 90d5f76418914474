"""Reliability with real components: a database outage, parallel sessions, schema migrations on
old data, and hostile messages through the widget channel.

The PostgreSQL tests use a server of their own (tests/own_postgres.py), which they stop and
restart; every test gets a fresh database in it.
"""

from __future__ import annotations

import itertools
import sqlite3
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from dashboard_driver import stroke_message
from helpers import SEVEN, make_feedback, save_untrained_model
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from digitlib import migrations
from digitlib.dashboard import Dashboard
from digitlib.feedback import feedback_drawings
from digitlib.limits import TokenBucket
from digitlib.modeling.checkpoint import load_model
from digitlib.preprocess import MAX_POINTS, MAX_STROKES
from digitlib.store import FeedbackStore, metadata

OWN_POSTGRES = pytest.param("postgresql", marks=pytest.mark.slow)  # a server of the test's own: pg_ctl start/stop


@pytest.fixture
def pg_database(own_postgres):
    """URL of a fresh, empty database in the test's own server."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    # No pool: a test may restart the server under it.
    admin = create_engine(own_postgres.url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))  # a name made here, not input
    yield make_url(own_postgres.url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


# --- database outage ---------------------------------------------------------------------------


@pytest.mark.slow  # starts and stops a PostgreSQL server of its own
def test_outage_every_submission_is_stored_exactly_once(own_postgres, pg_database, tmp_path):
    store = FeedbackStore(pg_database, queue_file=tmp_path / "queue.jsonl")
    before = [make_feedback(label=d % 10) for d in range(5)]
    assert [store.submit(f).status for f in before] == ["saved"] * 5

    own_postgres.stop()
    try:
        during = [make_feedback(label=d % 10) for d in range(5)]
        results = [store.submit(f) for f in during]
        results.append(store.submit(during[0]))  # a visitor's retry while it is down
        assert [r.status for r in results] == ["queued"] * 6
        assert len(store.queued()) == 6
    finally:
        own_postgres.start()

    # The next write replays the queue (the pooled connections died with the server).
    after = make_feedback(label=9)
    result = store.submit(after)
    assert result.status == "saved" and result.replayed == 5
    assert store.queued() == []
    assert store.submit(during[1]).status == "duplicate"  # a late retry stores nothing more

    ids = [r["submission_id"] for r in store.rows()]
    expected = [f.submission_id for f in [*before, *during, after]]
    assert sorted(ids) == sorted(expected)  # every one, none twice
    assert len(ids) == len(set(ids)) == 11
    store.dispose()


# --- concurrency -------------------------------------------------------------------------------


def _submit_from_a_session(url: str, queue_file: str, submissions: list[tuple[str, int]]) -> list[str]:
    """One dashboard kernel: its own store, answers from a few threads at once (double clicks)."""
    store = FeedbackStore(url, queue_file=queue_file)
    session = uuid.uuid4().hex

    def submit(item):
        submission_id, label = item
        return store.submit(make_feedback(label, submission_id=submission_id, session_id=session)).status

    with ThreadPoolExecutor(3) as pool:
        statuses = list(pool.map(submit, submissions))
    store.dispose()
    return statuses


@pytest.mark.parametrize("backend", [OWN_POSTGRES, "sqlite"])
def test_parallel_sessions_lose_nothing_and_duplicate_nothing(backend, request, tmp_path):
    url = request.getfixturevalue("pg_database") if backend == "postgresql" else f"sqlite:///{tmp_path / 'f.db'}"
    submissions = [(uuid.uuid4().hex, i % 10) for i in range(60)]
    # Four kernels; every submission is sent by two of them (a replay, a second tab), in opposite orders.
    shares = [[s for i, s in enumerate(submissions) if i % 4 in (k, (k + 1) % 4)] for k in range(4)]
    shares = [share[::-1] if k % 2 else share for k, share in enumerate(shares)]
    assert sorted(itertools.chain(*shares)) == sorted(submissions * 2)
    with ProcessPoolExecutor(4, mp_context=get_context("fork")) as pool:
        statuses = list(pool.map(_submit_from_a_session, [url] * 4, [str(tmp_path / "q.jsonl")] * 4, shares))
    flat = list(itertools.chain(*statuses))
    assert flat.count("saved") == 60 and flat.count("duplicate") == 60  # nothing queued, nothing failed

    store = FeedbackStore(url, queue_file=tmp_path / "q.jsonl")
    rows = store.rows()
    assert sorted(r["submission_id"] for r in rows) == sorted(s for s, _ in submissions)
    assert {r["submission_id"]: r["true_label"] for r in rows} == dict(submissions)
    store.dispose()


# --- migrations on old data ------------------------------------------------------------------

OLD_ROW = {
    "submission_id": "old-1",
    "created_at": "2026-01-02 03:04:05+00:00",
    "model_version": "vggbn-2026-01",
    "predicted": 3,
    "confidence": 0.8,
    "probabilities": "[0.02, 0.02, 0.02, 0.8, 0.02, 0.02, 0.02, 0.04, 0.02, 0.02]",
    "true_label": 8,
    "image": b"\x89PNG old",
    "strokes": "[[[1.0, 2.0], [3.0, 4.0]]]",
    "canvas_size": 280,
    "session_id": "old-session",
}


def insert_old_rows(url: str, count: int) -> None:
    """Rows as an older release wrote them: plain SQL against the old schema, no current code."""
    engine = create_engine(url)
    columns = ", ".join(OLD_ROW)
    values = ", ".join(f":{c}" for c in OLD_ROW)
    with engine.begin() as c:
        for i in range(count):
            c.execute(
                text(f"INSERT INTO prediction_logs ({columns}) VALUES ({values})"),
                {**OLD_ROW, "submission_id": f"old-{i}"},
            )
    engine.dispose()


def created_at_indexed(engine) -> bool:
    return any(ix["column_names"] == ["created_at"] for ix in inspect(engine).get_indexes("prediction_logs"))


@pytest.fixture(params=["sqlite", OWN_POSTGRES])
def empty_url(request, tmp_path):
    return request.getfixturevalue("pg_database") if request.param == "postgresql" else f"sqlite:///{tmp_path / 'f.db'}"


def test_upgrade_keeps_rows_written_under_the_old_schema(empty_url, tmp_path):
    engine = create_engine(empty_url)
    migrations.upgrade(engine, "0001")
    assert not created_at_indexed(engine)
    insert_old_rows(empty_url, 3)

    store = FeedbackStore(empty_url, queue_file=tmp_path / "q.jsonl")
    assert store.submit(make_feedback(label=2)).status == "saved"  # first use upgrades to head
    assert migrations.current_revision(engine) == migrations.head_revision() == "0004"
    assert created_at_indexed(engine)
    rows = store.rows()
    assert [r["submission_id"] for r in rows[:3]] == ["old-0", "old-1", "old-2"]
    old = rows[1]
    assert old["true_label"] == 8 and old["strokes"] == [[[1.0, 2.0], [3.0, 4.0]]]
    assert old["image"] == b"\x89PNG old" and old["probabilities"][3] == 0.8
    assert [d.label for d in feedback_drawings(store.url)] == [8, 8, 8, 2]

    migrations.downgrade(engine, "0001")  # and back: the rows stay both ways
    assert not created_at_indexed(engine) and store.count() == 4
    migrations.upgrade(engine)
    assert store.count() == 4
    store.dispose()
    engine.dispose()


def test_database_made_before_migrations_is_adopted(tmp_path):
    """An SQLite file from the release that used create_all: no alembic_version, rows inside."""
    path = tmp_path / "feedback.db"
    engine = create_engine(f"sqlite:///{path}")
    migrations.upgrade(engine, "0001")
    with engine.begin() as c:
        c.execute(text("DROP TABLE alembic_version"))
    engine.dispose()
    insert_old_rows(f"sqlite:///{path}", 2)
    assert "alembic_version" not in {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}

    store = FeedbackStore(f"sqlite:///{path}", queue_file=tmp_path / "q.jsonl")
    assert store.count() == 2
    assert migrations.current_revision(store.engine) == "0004"
    assert store.submit(make_feedback()).status == "saved" and store.count() == 3
    store.dispose()


def test_newest_revision_is_exactly_the_table_in_store_py(empty_url):
    engine = create_engine(empty_url)
    migrations.upgrade(engine)
    with engine.connect() as c:
        differences = compare_metadata(MigrationContext.configure(c), metadata)
    assert differences == []
    engine.dispose()


# --- hostile messages through the widget channel ---------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Any model will do: these tests are about the messages, not the digits (an untrained one trains nothing)."""
    return load_model(save_untrained_model(tmp_path_factory.mktemp("model") / "untrained"))


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dash(model, tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}", queue_file=tmp_path / "q.jsonl")
    dashboard = Dashboard(model, store, submit_limit=TokenBucket(per_minute=6, burst=3, clock=FakeClock()))
    yield dashboard
    store.dispose()


def deliver(widget, data, buffers=()) -> Exception | None:
    """A comm message from the browser, handled as the kernel's comm manager does: an exception
    is logged there and the kernel goes on, so here it is returned, not raised."""
    message = {"content": {"comm_id": widget.comm.comm_id, "data": data}, "buffers": list(buffers)}
    try:
        widget.comm.handle_msg(message)
    except Exception as e:
        return e
    return None


def pad_message(dash, content) -> Exception | None:
    """A message from the page's pad (a finished stroke: {"event": "stroke", "points": [x0, y0, ...]})."""
    return deliver(dash.canvas, {"method": "custom", "content": content})


def click(button) -> Exception | None:
    return deliver(button, {"method": "custom", "content": {"event": "click"}})


def draw_seven(dash) -> None:
    pad_message(dash, stroke_message(SEVEN[0]))


HOSTILE_POINTS = [
    float("nan"),
    float("inf"),
    "NaN",
    "12; import os",
    None,
    [1, 2],
    {"a": {"b": [1]}},
    10**400,
    "9" * 100_000,
]
HOSTILE_MESSAGES = [
    {"method": "custom", "content": {"event": "stroke"}},  # no points
    {"method": "custom", "content": {"event": "stroke", "points": "junk"}},
    {"method": "custom", "content": {"event": "stroke", "points": [[1, 2], [3, 4]]}},
    {"method": "custom", "content": {"event": "stroke", "points": [1, 2, 3]}},  # half a point
    {"method": "custom", "content": {"event": "stroke", "points": {"x": 1}}},
    {"method": "custom", "content": {"event": "key_down"}},
    {"method": "custom", "content": "not a dict"},
    {"method": "custom", "content": {"event": {"nested": [[[]]]}}},
    {"method": "custom"},
    {"method": "exec", "code": "import os; os.system('touch /tmp/pwned')"},
    {"method": "update", "state": {"width": "huge"}},
    {"no method": True},
]


def test_hostile_canvas_messages_are_refused_and_the_session_goes_on(dash):
    for x, y in itertools.product(HOSTILE_POINTS, [5, *HOSTILE_POINTS[:3]]):
        pad_message(dash, {"event": "stroke", "points": [x, y]})
        pad_message(dash, {"event": "stroke", "points": [10, 10, x, y, 20, 20]})
    for message in HOSTILE_MESSAGES:
        deliver(dash.canvas, message)

    assert dash.pad.empty  # no garbage point became ink
    assert "went wrong" not in dash.status.value  # our handlers refused everything cleanly
    assert not dash.answers_enabled
    for d in range(10):
        click(dash.label_buttons[d])  # answers to no drawing store nothing
    assert dash.store.count() == 0

    draw_seven(dash)  # the same session still draws, predicts and stores
    assert dash.prediction is not None and len(dash.pad.strokes) == 1
    assert dash.pad.strokes[0][0] == (100.0, 60.0) and dash.pad.strokes[0][-1] == (130.0, 220.0)
    assert click(dash.label_buttons[7]) is None
    assert "Saved as 7" in dash.status.value and dash.store.count() == 1


def test_ink_spam_is_capped(dash):
    for i in range(MAX_STROKES + 5):
        pad_message(dash, {"event": "stroke", "points": [v for j in range(20) for v in (i + 2 * j, i + j % 7)]})
    assert len(dash.pad.strokes) == MAX_STROKES and dash.pad.points <= MAX_POINTS
    assert "enough ink" in dash.status.value
    assert dash.prediction is not None  # a capped drawing is still a drawing
    assert click(dash.label_buttons[1]) is None and dash.store.count() == 1


def test_button_spam_stores_a_drawing_once_and_the_rate_limit_holds(dash):
    draw_seven(dash)
    for _ in range(50):
        click(dash.label_buttons[7])
        click(dash.correct_button)
    assert dash.store.count() == 1

    outcomes = []
    for _ in range(5):  # burst of 3: the first answer above used one token
        draw_seven(dash)
        click(dash.label_buttons[4])
        outcomes.append(dash.status.value)
    assert sum("Saved" in o for o in outcomes) == 2
    assert "Too many answers" in outcomes[-1] and "wait 10 s" in outcomes[-1]  # 6 a minute: one per 10 s
    assert dash.store.count() == 3
    assert not dash.pad.empty  # a refused answer keeps the drawing: it can be sent later

    dash.submit_limit.clock.now += 10
    click(dash.label_buttons[4])
    assert "Saved as 4" in dash.status.value and dash.store.count() == 4
    assert np.all([r["session_id"] == dash.session_id for r in dash.store.rows()])
