"""Hardening (issue 18): secrets stay off pages and logs, the queue never jams or loses an answer,
the dashboard's database work fails fast under a held lock, relative SQLite URLs mean one file,
and the CLI answers bad input with one line and exit status 2.

Attacked from outside where it matters: the CLI as a subprocess, a real PostgreSQL with the
dashboard's least-privilege role, queue files as a crash or a careless hand would leave them.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys

import pytest
from dashboard_driver import draw
from helpers import SEVEN, UNREACHABLE_URL, make_feedback, save_untrained_model
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, ProgrammingError

from digitlib import config, migrations
from digitlib.store import (
    Feedback,
    FeedbackError,
    FeedbackStore,
    StoreConfigError,
    redact_url,
    resolve_database_url,
)

ROOT = config.PROJ_ROOT
SECRET = "S3cretPW"


def digitlib_cli(*args, cwd=ROOT, env=None, **kwargs) -> subprocess.CompletedProcess:
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "digitlib", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


# --- no secret reaches a page or a log -------------------------------------------------------

MALFORMED_URLS = [
    f"postgresql+psycopg2//user:{SECRET}@db.example/feedback",  # the colon missing
    f" postgresql+psycopg2://user:{SECRET}@db.example/feedback",  # a leading space
    f"postgresql+psycopg2:/user:{SECRET}@db.example/feedback",
    f"postgresql+nosuchdriver://user:{SECRET}@db.example/feedback",  # parses, no such driver
    f"postgresql://user:pa@{SECRET}@db.example/feedback",  # an unescaped @ in the password
]


@pytest.mark.parametrize("url", MALFORMED_URLS)
def test_a_malformed_database_url_never_shows_its_password(url, tmp_path, caplog):
    assert SECRET not in redact_url(url) and "user" in redact_url(url)
    with caplog.at_level(logging.DEBUG):
        try:
            FeedbackStore(url, queue_file=tmp_path / "q.jsonl").dispose()
        except StoreConfigError as e:
            message = str(e)
        else:  # a space around a good URL is forgiven
            message = ""
    assert SECRET not in message and SECRET not in caplog.text


def test_redaction_keeps_what_an_operator_needs():
    assert redact_url("postgresql+psycopg2://me:pw@db:5432/fb") == "postgresql+psycopg2://me:***@db:5432/fb"
    assert redact_url("postgresql://me@db/fb") == "postgresql://me@db/fb"
    assert redact_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


@pytest.mark.parametrize("url", MALFORMED_URLS[:3])
def test_cli_commands_report_a_bad_url_without_its_password(url, tmp_path):
    export = digitlib_cli("export-feedback", str(tmp_path / "out"), "--database-url", url, "--json")
    migrate = subprocess.run(
        [sys.executable, "-m", "digitlib.migrations", "current", "--url", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    for done in (export, migrate):
        assert done.returncode == 2, done.stderr
        assert SECRET not in done.stdout + done.stderr
        assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1
        assert "***" in done.stderr


# --- the on-disk queue -------------------------------------------------------------------------


def queued_line(**changes) -> bytes:
    row = json.loads(make_feedback().to_json())
    row.update(changes)
    return json.dumps(row).encode()


def test_each_bad_queue_line_is_set_aside_alone_and_good_rows_are_stored(tmp_path, sqlite_url):
    queue = tmp_path / "q.jsonl"
    good = [make_feedback(label=d) for d in (1, 2, 3)]
    not_png = base64.b64encode(b"GIF89a" + bytes(100)).decode()
    queue.write_bytes(
        good[0].to_json().encode() + b"\n"
        + b'{"submission_id": "caf\xe9"}\n'  # not UTF-8
        + queued_line(true_label=17) + b"\n"  # an invalid row
        + queued_line(image=not_png) + b"\n"  # not a PNG: must never reach the table
        + queued_line(true_label=True) + b"\n"
        + b"[" * 100_000 + b"\n"  # nesting deep enough to break a recursive parser
        + good[1].to_json().encode() + b"\n"
        + b'{"submission_id": "torn'  # a crash mid-write: no newline
    )  # fmt: skip
    store = FeedbackStore(sqlite_url, queue_file=queue)
    assert [f.submission_id for f in store.queued()] == [good[0].submission_id, good[1].submission_id]
    assert not store.rejected_file.exists()  # reading the queue moves nothing

    down = FeedbackStore(UNREACHABLE_URL, queue_file=queue)
    assert down.submit(good[2]).status == "queued"  # appended after the torn line...
    assert queue.read_bytes().endswith(b'"torn\n' + good[2].to_json().encode() + b"\n")  # ...never glued to it

    assert store.flush_queue() == 3
    assert sorted(r["true_label"] for r in store.rows()) == [1, 2, 3]
    assert queue.read_bytes() == b""
    rejected = [json.loads(line) for line in store.rejected_file.read_text().splitlines()]
    reasons = [r["reason"] for r in rejected]
    assert len(rejected) == 6
    assert "line 2" in reasons[0] and "utf-8" in reasons[0].lower()
    assert base64.b64decode(rejected[0]["line_base64"]) == b'{"submission_id": "caf\xe9"}'
    assert "line 3" in reasons[1] and "label must be a digit" in reasons[1]
    assert "line 4" in reasons[2] and "PNG" in reasons[2]
    assert "label must be a digit" in reasons[3]
    assert "not JSON" in reasons[4]
    assert "line 8: not JSON" in reasons[5] and rejected[5]["line"] == '{"submission_id": "torn'
    assert store.flush_queue() == 0


def test_bad_lines_are_set_aside_even_while_the_database_is_down(tmp_path):
    queue = tmp_path / "q.jsonl"
    waiting = make_feedback(label=4)
    queue.write_bytes(queued_line(true_label=17) + b"\n" + waiting.to_json().encode() + b"\n")
    down = FeedbackStore(UNREACHABLE_URL, queue_file=queue)
    with pytest.raises(OperationalError):
        down.flush_queue()
    assert [f.submission_id for f in down.queued()] == [waiting.submission_id]  # the good row waits
    assert "label must be a digit" in down.rejected_file.read_text()


def test_every_queued_field_is_checked_on_replay():
    line = make_feedback().to_json()
    assert Feedback.from_json(line) == Feedback.from_json(line.encode())
    for changes, reason in [
        ({"predicted": 3}, "predicted or strokes differ"),
        ({"probabilities": [0.1] * 9 + [0.2]}, "sum to 1"),
        ({"created_at": "2026-01-01T00:00:00"}, "time zone"),
        ({"image": "!!!"}, "unreadable"),
        ({"canvas_size": 10**9}, "canvas_size"),
        ({"strokes": [[[1e9, 1]]]}, "far outside"),
        ({"extra": 1}, "not a feedback row"),
    ]:
        with pytest.raises(FeedbackError, match=reason):
            Feedback.from_json(queued_line(**changes))


def test_a_store_failure_outside_the_database_queues_the_answer(tmp_path):
    """An SQLite file whose migration lock cannot be opened (OSError): the answer is queued, then stored."""
    database = tmp_path / "feedback.db"
    lock = tmp_path / "feedback.db.migrate-lock"
    lock.mkdir()  # opening it for writing fails as a read-only folder would (root ignores modes)
    store = FeedbackStore(f"sqlite:///{database}", queue_file=tmp_path / "q.jsonl")
    first = make_feedback(label=5)
    result = store.submit(first)
    assert result.status == "queued" and "kept on this server" in result.message
    lock.rmdir()
    assert store.submit(make_feedback(label=6)).replayed == 1
    assert sorted(r["true_label"] for r in store.rows()) == [5, 6]


def test_when_nothing_can_keep_the_answer_the_visitor_gets_a_clear_refusal(tmp_path):
    queue = tmp_path / "queue-is-a-folder"
    queue.mkdir()
    store = FeedbackStore(UNREACHABLE_URL, queue_file=queue)
    with pytest.raises(FeedbackError, match="try again later"):
        store.submit(make_feedback())


# --- timeouts and the migration lock on the real PostgreSQL -----------------------------------


@pytest.fixture(scope="module")
def dashboard_role(own_postgres):
    """Owner migrates and grants, as deploy does; returns (owner engine, dashboard URL)."""
    admin = make_url(own_postgres.url)
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(admin.port), "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1"]
        + ["-v", "role=dashboard", "-v", "password=pw", "-v", "db=postgres", "-q"]
        + ["-f", str(ROOT / "deploy/sql/dashboard-role.sql")],
        check=True,
        capture_output=True,
    )
    owner = create_engine(own_postgres.url)
    migrations.upgrade(owner)
    migrations.grant_to_dashboard(owner, "dashboard")
    yield owner, admin.set(username="dashboard", password="pw").render_as_string(hide_password=False)
    owner.dispose()


@pytest.mark.slow
def test_a_held_table_lock_sends_the_answer_to_the_queue(dashboard_role, tmp_path):
    owner, url = dashboard_role
    store = FeedbackStore(url, queue_file=tmp_path / "q.jsonl")
    blocked = make_feedback(label=2)
    with owner.connect() as holder:
        holder.execute(text("LOCK TABLE prediction_logs IN ACCESS EXCLUSIVE MODE"))
        # Without lock_timeout this submit would wait as long as the lock is held.
        assert store.submit(blocked).status == "queued"
        holder.rollback()
    later = make_feedback(label=3)
    assert store.submit(later).replayed == 1
    assert {blocked.submission_id, later.submission_id} <= {r["submission_id"] for r in store.rows()}
    with store.engine.connect() as c:
        assert c.execute(text("SHOW lock_timeout")).scalar() == f"{config_lock_timeout()}s"
        assert c.execute(text("SHOW statement_timeout")).scalar().endswith("s")
    store.dispose()


def config_lock_timeout() -> int:
    from digitlib.store import LOCK_TIMEOUT_S

    return LOCK_TIMEOUT_S


@pytest.mark.slow
def test_the_migration_lock_is_not_the_dashboards(dashboard_role, tmp_path):
    owner, url = dashboard_role
    store = FeedbackStore(url, queue_file=tmp_path / "q.jsonl")
    with owner.connect() as holder:
        # Whoever holds the old advisory key no longer holds up the dashboard: at head it takes no lock.
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": migrations.MIGRATION_LOCK_KEY})
        assert store.submit(make_feedback()).status == "saved"
        holder.execute(text("SELECT pg_advisory_unlock_all()"))
        holder.commit()
    # The migration lock on alembic_version needs rights the dashboard role lacks.
    with pytest.raises(ProgrammingError, match="permission denied"), store.engine.begin() as c:
        c.execute(text("LOCK TABLE alembic_version IN EXCLUSIVE MODE"))
    # A schema behind head: the dashboard does not try to migrate, it queues and says why in the log.
    migrations.downgrade(owner, "0001")
    behind = FeedbackStore(url, queue_file=tmp_path / "q.jsonl")
    with pytest.raises(migrations.MigrationError, match="make migrate"):
        behind.ensure_schema()
    assert behind.submit(make_feedback()).status == "queued"
    assert migrations.current_revision(owner) == "0001"
    store.dispose()
    behind.dispose()
    migrations.upgrade(owner)  # the owner can, and the queued answer then goes in
    assert FeedbackStore(url, queue_file=tmp_path / "q.jsonl").flush_queue() == 1


# --- relative SQLite URLs ----------------------------------------------------------------------


def test_a_relative_sqlite_url_is_one_file_from_every_working_directory(tmp_path):
    relative = os.path.relpath(tmp_path / "rel" / "x.db", ROOT)
    url = f"sqlite:///{relative}"
    assert resolve_database_url(url) == f"sqlite:///{tmp_path / 'rel' / 'x.db'}"
    script = (
        "from digitlib.store import FeedbackStore; import sys; "
        "s = FeedbackStore(sys.argv[1], queue_file=sys.argv[2]); print(s.engine.url.database)"
    )
    seen = set()
    for cwd in (ROOT, ROOT / "dashboards", tmp_path):  # the CLI, the dashboard's kernels, anywhere
        done = subprocess.run(
            [sys.executable, "-c", script, url, str(tmp_path / "q.jsonl")],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        seen.add(done.stdout.strip())
    assert seen == {str(tmp_path / "rel" / "x.db")}
    assert resolve_database_url("sqlite://") == "sqlite://"  # in memory stays in memory
    assert resolve_database_url(f"sqlite:///{tmp_path}/a.db") == f"sqlite:///{tmp_path}/a.db"


def test_the_settings_table_shows_the_default_database_as_the_absolute_path_it_is():
    settings_page = (ROOT / "docs" / "dashboard.md").read_text()  # the README links to it
    row = next(line for line in settings_page.splitlines() if line.startswith("| `DATABASE_URL`"))
    assert "sqlite:///data/feedback.db" not in row
    assert config.DATABASE_URL.default.startswith(f"sqlite:///{ROOT}")


# --- the CLI: bad input is one line on stderr, exit status 2, nothing or valid JSON on stdout --------

GOOD_DRAWING = {"label": 7, "strokes": SEVEN, "source": "t"}


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory):
    """A model directory (untrained weights: these tests are about input, not accuracy)."""
    return save_untrained_model(tmp_path_factory.mktemp("m") / "model", onnx_check_limit=64)


def strict_json(text: str) -> dict:
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def assert_one_line_error(done: subprocess.CompletedProcess, *expected: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    for text_ in expected:
        assert text_ in lines[0], lines[0]


BAD_DRAWING_LINES = {
    "a 400-digit coordinate": json.dumps({"label": 1, "strokes": [[[10**400, 3], [5, 5]]]}),
    "a 400-digit label": json.dumps({"label": 10**400, "strokes": GOOD_DRAWING["strokes"]}),
    "a float too large for a double": '{"label": 1, "strokes": [[[1e400, 3]]]}',
    "label true": json.dumps({"label": True, "strokes": GOOD_DRAWING["strokes"]}),
    "deeply nested": '{"label": 1, "strokes": ' + "[" * 200_000 + "]" * 200_000 + "}",
    "not an object": "[1, 2, 3]",
    "no strokes": '{"label": 1}',
    "strokes a string": '{"label": 1, "strokes": "1,2"}',
    "not UTF-8": '{"label": 1, "source": "caf\xe9"}',
    "torn": '{"label": 1, "strokes": [[[1,',
}


def drawings_file(path, bad: str):
    line = BAD_DRAWING_LINES[bad].encode("latin-1" if bad == "not UTF-8" else "utf-8")
    path.write_bytes(json.dumps(GOOD_DRAWING).encode() + b"\n\n" + line + b"\n")
    return path


@pytest.mark.parametrize("bad", list(BAD_DRAWING_LINES), ids=list(BAD_DRAWING_LINES))
def test_any_bad_drawing_is_a_data_error_naming_the_file_and_line(bad, tmp_path):
    from digitlib.dataset import DataError
    from digitlib.drawings import load_drawings

    path = drawings_file(tmp_path / "drawings.jsonl", bad)
    with pytest.raises(DataError) as caught:
        load_drawings(path)
    assert str(caught.value).startswith(f"{path}, line 3: ") and len(str(caught.value)) < 500


# The cases through the command itself (each a subprocess importing torch: a few only).
@pytest.mark.parametrize("bad", ["a 400-digit coordinate", "label true", "deeply nested", "not UTF-8"])
def test_eval_drawings_names_the_file_and_line_of_a_bad_drawing(bad, untrained_model, tmp_path):
    path = drawings_file(tmp_path / "drawings.jsonl", bad)
    done = digitlib_cli("eval-drawings", str(path), "--model", str(untrained_model), "--json")
    assert_one_line_error(done, f"{path}, line 3")


def test_eval_drawings_refuses_a_line_longer_than_any_drawing(untrained_model, tmp_path):
    from digitlib.drawings import MAX_LINE_BYTES

    path = tmp_path / "long.jsonl"
    path.write_bytes(b'{"label": 1, "pad": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}\n')
    done = digitlib_cli("eval-drawings", str(path), "--model", str(untrained_model), "--json")
    assert_one_line_error(done, f"{path}, line 1", "longer than")


def test_eval_drawings_on_an_empty_file_is_an_error_not_nan(untrained_model, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    done = digitlib_cli("eval-drawings", str(path), "--model", str(untrained_model), "--json")
    assert_one_line_error(done, str(path), "no drawings")


def test_eval_drawings_prints_strict_json(untrained_model, tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text("".join(json.dumps({**GOOD_DRAWING, "source": s}) + "\n" for s in ("a", "b", "b")))
    done = digitlib_cli("eval-drawings", str(path), "--model", str(untrained_model), "--json")
    assert done.returncode == 0, done.stderr
    result = strict_json(done.stdout)
    assert result["n"] == 3 and set(result["per_source"]) == {"a", "b"}


def test_drawings_are_evaluated_in_batches_never_all_at_once(tmp_path):
    """The 200 MB case: memory follows the batch, not the file (figures: benchmarks/cli_memory.py)."""
    import torch

    from digitlib.drawings import evaluate_drawings_file

    class Recorder:
        sizes: list[int] = []

        def predict_proba(self, images):
            self.sizes.append(len(images))
            return torch.full((len(images), 10), 0.1)

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(GOOD_DRAWING) + "\n" for _ in range(7)))
    model = Recorder()
    result = evaluate_drawings_file(model, path, batch=3)
    assert model.sizes == [3, 3, 1] and result.evaluation.n == 7 and result.digits is None


def test_mnist_dir_missing_one_file_is_an_error_naming_it(untrained_model, tmp_path, mnist_dir):
    for f in sorted(mnist_dir.glob("*.gz"))[:3]:
        (tmp_path / f.name).symlink_to(f.resolve())
    missing = sorted(f.name for f in mnist_dir.glob("*.gz"))[3].removesuffix(".gz")
    done = digitlib_cli("evaluate", "--model", str(untrained_model), "--json", env={"MNIST_DIR": str(tmp_path)})
    assert_one_line_error(done, "MNIST_DIR", f"{tmp_path / missing}(.gz) is missing")


def test_export_feedback_to_a_full_disk_leaves_the_old_export_whole(tmp_path, sqlite_url):
    from digitlib.feedback_export import load_export

    store = FeedbackStore(sqlite_url, queue_file=tmp_path / "q.jsonl")
    for label in range(10):
        store.submit(make_feedback(label=label, strokes=[[[100 + 5 * label, 60], [180, 60], [130, 220]]]))
    store.dispose()
    out = tmp_path / "export"
    # --keep-suspect: these made-up drawings would be set aside by the label checks; all ten are kept.
    export = ("export-feedback", str(out), "--database-url", sqlite_url, "--keep-suspect", "--json")
    assert digitlib_cli(*export).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    # Once the feedback is read, a file-size limit makes every write past 512 bytes fail (EFBIG),
    # as a full disk fails with ENOSPC.
    limit = """
import resource, runpy, signal, sys
import digitlib.feedback as feedback
read = feedback.load_feedback
def read_then_fill_the_disk(*args, **kwargs):
    frame = read(*args, **kwargs)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))
    return frame
feedback.load_feedback = read_then_fill_the_disk
sys.argv = ["digitlib", *sys.argv[1:]]
runpy.run_module("digitlib", run_name="__main__")
"""
    done = subprocess.run(
        [sys.executable, "-c", limit, *export],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_line_error(done, str(out), "export not written", "the folder is as it was")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary file left, nothing half-written
    assert len(load_export(out).train) + len(load_export(out).holdout) == 10


# --- what the visitor sees -------------------------------------------------------------------------


def test_the_dashboard_page_never_shows_the_password_of_a_malformed_url(untrained_model, caplog):
    from digitlib.dashboard import build_dashboard

    with caplog.at_level(logging.DEBUG):
        page = build_dashboard(model_dir=str(untrained_model), database_url=MALFORMED_URLS[0])
    assert "cannot start" in page.value and "user:***@db.example" in page.value
    assert SECRET not in page.value and SECRET not in caplog.text


def test_a_visitor_whose_answer_cannot_be_stored_is_told_it_is_kept(untrained_model, tmp_path):
    """The read-only SQLite case through the dashboard's own handler: never "Something went wrong"."""
    from digitlib.dashboard import Dashboard
    from digitlib.modeling.checkpoint import load_model

    (tmp_path / "feedback.db.migrate-lock").mkdir()  # the lock cannot be opened: OSError
    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}", queue_file=tmp_path / "q.jsonl")
    dash = Dashboard(load_model(untrained_model), store)
    draw(dash, SEVEN)
    assert dash.submit(7) == "queued"
    assert "kept on this server" in dash.status.value and "Something went wrong" not in dash.status.value
    assert [f.true_label for f in store.queued()] == [7]


def test_a_locked_sqlite_file_queues_the_answer_after_the_busy_timeout(tmp_path):
    import sqlite3

    path = tmp_path / "feedback.db"
    store = FeedbackStore(f"sqlite:///{path}", queue_file=tmp_path / "q.jsonl")
    assert store.submit(make_feedback(label=1)).status == "saved"
    holder = sqlite3.connect(path)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the write lock and does not let go
    blocked = make_feedback(label=2)
    assert store.submit(blocked).status == "queued"
    holder.rollback()
    holder.close()
    assert store.flush_queue() == 1 and store.count() == 2
    store.dispose()
