"""The feedback store against SQLite and the real PostgreSQL (TEST_DATABASE_URL).

PostgreSQL tests run in a schema of their own (dropped afterwards), so they are isolated from
each other and from whatever else is in the database. In CI (CI=true) a PostgreSQL that cannot
be reached fails the tests; elsewhere they are skipped.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from helpers import PROBABILITIES, SEVEN, UNREACHABLE_URL, make_feedback
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from digitlib import migrations
from digitlib.feedback import feedback_drawings
from digitlib.preprocess import MAX_POINTS, MAX_STROKES, strokes_to_input
from digitlib.store import (
    NOT_A_DIGIT,
    SCHEMA_HEAD,
    Feedback,
    FeedbackError,
    FeedbackStore,
    StoreConfigError,
    png_to_image,
)


def test_submit_stores_one_complete_row(store):
    feedback = make_feedback(label=1)
    result = store.submit(feedback)
    assert result.status == "saved" and result.stored
    assert "Saved as 1" in result.message
    [row] = store.rows()
    assert row["submission_id"] == feedback.submission_id
    assert row["true_label"] == 1 and row["predicted"] == 7
    assert row["confidence"] == pytest.approx(0.91)
    assert row["probabilities"] == pytest.approx(PROBABILITIES)
    assert row["strokes"] == [[[100.0, 60.0], [180.0, 60.0], [130.0, 220.0]]]
    assert row["canvas_size"] == 280 and row["session_id"] == "session-1"
    assert row["model_version"] == "test-model-1"
    assert row["created_at"] is not None
    # The PNG is the 28x28 model input, pixel for pixel.
    assert np.array_equal(png_to_image(row["image"]), np.asarray(strokes_to_input(SEVEN)))


def test_same_submission_is_stored_once(store):
    feedback = make_feedback()
    assert store.submit(feedback).status == "saved"
    again = store.submit(feedback)
    assert again.status == "duplicate" and again.stored
    assert store.count() == 1
    assert store.submit(make_feedback()).status == "saved"  # another drawing, another row
    assert store.count() == 2


def test_stored_answers_come_back_as_drawings(store):
    store.submit(make_feedback(label=4))
    [drawing] = feedback_drawings(store.url)
    assert drawing.label == 4 and drawing.source == "feedback"
    # Back through the one preprocessing path, it is the same model input.
    assert np.array_equal(np.asarray(strokes_to_input(drawing.strokes)), np.asarray(strokes_to_input(SEVEN)))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"label": 10}, "label must be a digit 0-9"),
        ({"label": -1}, "label must be a digit 0-9"),
        ({"label": "7"}, "label must be a digit 0-9"),
        ({"label": True}, "label must be a digit 0-9"),
        ({"label": None}, "label must be a digit 0-9"),  # a missing label is not "not a digit"
        ({"label": "Not a digit"}, "label must be a digit 0-9"),
        ({"rejected": 1}, "rejected must be true or false"),
        ({"not_digit_probability": 1.5}, "not_digit_probability must be a number in [0, 1]"),
        ({"not_digit_probability": float("nan")}, "not_digit_probability"),
        ({"not_digit_probability": "0.5"}, "not_digit_probability"),
        ({"strokes": []}, "empty"),
        ({"strokes": [[]]}, "empty"),
        ({"strokes": [[[1, 2]]] * (MAX_STROKES + 1)}, f"at most {MAX_STROKES}"),
        ({"strokes": [[[5.0, 5.0]] * (MAX_POINTS + 1)]}, f"more than {MAX_POINTS} points"),
        ({"strokes": [[[1e9, 3]]]}, "far outside"),
        ({"strokes": [[[float("nan"), 3]]]}, "finite"),
        ({"strokes": [[["a", "b"]]]}, "must be [x, y] numbers"),
        ({"strokes": "1,2"}, "must be a list"),
        ({"probabilities": [0.5, 0.5]}, "ten numbers"),
        ({"probabilities": [0.5] * 10}, "sum to 1"),
        ({"image": np.zeros((10, 10), np.uint8)}, "28x28 uint8"),
        ({"session_id": "x" * 65}, "session_id"),
        ({"submission_id": ""}, "submission_id"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(changes, message):
    args = {"strokes": SEVEN, "true_label": 7, "probabilities": PROBABILITIES, "model_version": "m", "session_id": "s"}
    args["image"] = np.asarray(strokes_to_input(SEVEN))  # a good drawing's image: the changes are what is refused
    args.update(changes)
    args["true_label"] = args.pop("label", args["true_label"])
    with pytest.raises(FeedbackError) as caught:
        Feedback.create(**args)
    assert message in str(caught.value)


def test_database_refusing_a_row_writes_nothing(store):
    # Slipped past validation (constructed directly): the database's own check refuses it,
    # and the transaction leaves no row behind.
    bad = Feedback(**{**make_feedback().to_row(), "true_label": 12})
    with pytest.raises(FeedbackError, match="refused"):
        store.submit(bad)
    assert store.count() == 0
    assert store.queued() == []


def test_bad_url_is_a_clear_error(tmp_path):
    with pytest.raises(StoreConfigError, match="not an SQLAlchemy URL"):
        FeedbackStore("not a url", queue_file=tmp_path / "q.jsonl")


def test_outage_queues_on_disk_then_flush_stores_exactly_once(store, tmp_path):
    queue = store.queue_file
    down = FeedbackStore(UNREACHABLE_URL, queue_file=queue)
    first, second = make_feedback(label=3), make_feedback(label=5)
    results = [down.submit(first), down.submit(second), down.submit(first)]  # a retry too
    assert [r.status for r in results] == ["queued"] * 3
    assert not results[0].stored
    assert "unreachable" in results[0].message and "saved when it is back" in results[0].message
    assert [f.submission_id for f in down.queued()] == [first.submission_id, second.submission_id, first.submission_id]
    with pytest.raises(OperationalError):
        down.flush_queue()  # still down: the queue stays as it was
    assert len(down.queued()) == 3

    assert store.flush_queue() == 2
    assert store.queued() == [] and queue.read_text() == ""
    rows = store.rows()
    assert sorted(r["submission_id"] for r in rows) == sorted([first.submission_id, second.submission_id])
    assert {r["true_label"] for r in rows} == {3, 5}
    assert store.flush_queue() == 0  # nothing left, nothing written twice
    assert store.count() == 2


def test_next_successful_write_replays_the_queue(store):
    down = FeedbackStore(UNREACHABLE_URL, queue_file=store.queue_file)
    waiting = make_feedback(label=2)
    assert down.submit(waiting).status == "queued"
    result = store.submit(make_feedback(label=8))
    assert result.status == "saved" and result.replayed == 1
    assert sorted(r["true_label"] for r in store.rows()) == [2, 8]
    assert store.queued() == []


def test_queued_row_keeps_every_field(tmp_path):
    down = FeedbackStore(UNREACHABLE_URL, queue_file=tmp_path / "q.jsonl")
    feedback = make_feedback(label=6)
    down.submit(feedback)
    [back] = down.queued()
    assert back == feedback  # image bytes and UTC time included


def test_torn_queue_line_is_kept_aside_not_lost(tmp_path, sqlite_url):
    queue = tmp_path / "q.jsonl"
    good = make_feedback(label=9)
    queue.write_text(good.to_json() + "\n" + '{"submission_id": "half-writ' + "\n")
    store = FeedbackStore(sqlite_url, queue_file=queue)
    assert store.flush_queue() == 1
    assert [r["true_label"] for r in store.rows()] == [9]
    assert '"half-writ' in queue.with_suffix(".rejected").read_text()
    assert queue.read_text() == ""


def test_default_url_is_the_database_url_setting(monkeypatch, tmp_path):
    path = tmp_path / "sub" / "from-env.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    store = FeedbackStore(queue_file=tmp_path / "q.jsonl")
    assert store.submit(make_feedback()).status == "saved"
    assert path.is_file()
    assert store.count() == 1


def test_an_sqlite_file_is_written_through_a_write_ahead_log(tmp_path):
    """A notebook reading feedback must not block the dashboard kernels writing it."""
    path = tmp_path / "feedback.db"
    store = FeedbackStore(f"sqlite:///{path}", queue_file=tmp_path / "q.jsonl")
    assert store.submit(make_feedback()).status == "saved"
    reader = sqlite3.connect(path)
    assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM prediction_logs").fetchone() == (1,)  # a read stays open...
    assert store.submit(make_feedback()).status == "saved"  # ...and a write still goes through at once
    reader.rollback()
    assert reader.execute("SELECT count(*) FROM prediction_logs").fetchone() == (2,)
    reader.close()
    store.dispose()


# --- "not a digit" answers (revision 0003) ------------------------------------------------


def test_a_not_a_digit_answer_is_stored_apart_from_digit_labels(store):
    rejected = make_feedback(NOT_A_DIGIT, rejected=True, not_digit_probability=0.93)
    assert store.submit(rejected).message == "Saved as not a digit. Thank you!"
    store.submit(make_feedback(label=7, not_digit_probability=0.01))
    old_model = make_feedback(label=1)  # a model without a not-digit output: no probability
    store.submit(old_model)
    first, second, third = store.rows()
    assert first["not_digit"] is True and first["true_label"] is None
    assert first["rejected"] is True and first["not_digit_probability"] == pytest.approx(0.93)
    assert first["predicted"] == 7  # the best guess, as shown in small print
    assert second["not_digit"] is False and second["true_label"] == 7 and second["rejected"] is False
    assert third["not_digit_probability"] is None
    # Drawings for digit training and evaluation carry digit labels only.
    assert [d.label for d in feedback_drawings(store.url)] == [7, 1]


@pytest.mark.parametrize(
    ("true_label", "not_digit"),
    [(None, False), (3, True), (12, False)],
    ids=["neither-label-nor-not-a-digit", "both", "out-of-range"],
)
def test_the_database_refuses_a_row_that_is_neither_or_both(store, true_label, not_digit):
    bad = Feedback(**{**make_feedback().to_row(), "true_label": true_label, "not_digit": not_digit})
    with pytest.raises(FeedbackError, match="refused"):
        store.submit(bad)
    assert store.count() == 0


def test_not_a_digit_answers_survive_the_queue(store):
    down = FeedbackStore(UNREACHABLE_URL, queue_file=store.queue_file)
    feedback = make_feedback(NOT_A_DIGIT, rejected=False, not_digit_probability=0.2)
    assert down.submit(feedback).status == "queued"
    [back] = down.queued()
    assert back == feedback and back.answer == NOT_A_DIGIT
    assert store.flush_queue() == 1
    [row] = store.rows()
    assert row["not_digit"] is True and row["true_label"] is None and row["not_digit_probability"] == pytest.approx(0.2)


def test_queue_lines_from_before_revision_0003_are_still_stored(store):
    """A row queued by the previous release (no not-digit fields) is a digit answer."""
    line = json.loads(make_feedback(label=4).to_json())
    for name in ("not_digit", "rejected", "not_digit_probability"):
        del line[name]
    store.queue_file.write_text(json.dumps(line) + "\n")
    assert store.flush_queue() == 1
    [row] = store.rows()
    assert row["true_label"] == 4 and row["not_digit"] is False and row["not_digit_probability"] is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"not_digit": True}, "carries no label"),  # label 4 and "not a digit" at once
        ({"not_digit": "yes"}, "not_digit must be true or false"),
        ({"rejected": "no"}, "rejected must be true or false"),
        ({"not_digit_probability": 7}, "not_digit_probability"),
        ({"true_label": None}, "label must be a digit"),  # neither
        ({"surprise": 1}, "not a feedback row"),
    ],
)
def test_bad_not_a_digit_queue_lines_are_kept_aside(store, changes, reason):
    good = make_feedback(label=2)
    line = {**json.loads(make_feedback(label=4).to_json()), **changes}
    store.queue_file.write_text(json.dumps(line) + "\n" + good.to_json() + "\n")
    assert store.flush_queue() == 1  # the good row still goes in
    assert [r["true_label"] for r in store.rows()] == [2]
    assert reason in store.rejected_file.read_text()


def test_migrating_to_0003_keeps_digit_rows_and_refuses_to_drop_not_a_digit_answers(store):
    migrations.upgrade(store.engine, "0002")
    store.submit(make_feedback(label=5))
    assert migrations.current_revision(store.engine) == "0004"  # the store's first use upgrades...
    migrations.downgrade(store.engine, "0002")  # ...and back: digit rows fit 0002
    with store.engine.connect() as c:
        assert c.execute(text("SELECT true_label FROM prediction_logs")).scalars().all() == [5]
    migrations.upgrade(store.engine)
    [row] = store.rows()
    assert row["true_label"] == 5 and row["not_digit"] is False and row["rejected"] is False
    assert row["not_digit_probability"] is None

    store.submit(make_feedback(NOT_A_DIGIT))
    with pytest.raises(RuntimeError, match="1 stored answers say 'not a digit'"):
        migrations.downgrade(store.engine, "0002")
    assert migrations.current_revision(store.engine) == "0004" and store.count() == 2  # nothing lost


# --- where a label came from (revision 0004) ----------------------------------------------


@pytest.mark.parametrize(
    ("answer", "changes", "source"),
    [
        (7, {}, "confirmed"),  # the model said 7
        (1, {}, "corrected"),
        (NOT_A_DIGIT, {"rejected": True}, "confirmed"),  # the model said "not a digit" too
        (NOT_A_DIGIT, {}, "corrected"),
        (7, {"rejected": True}, "corrected"),  # its best guess was 7, but it answered "not a digit"
        (1, {"label_source": "prompt"}, "prompt"),
    ],
)
def test_each_row_records_where_its_label_came_from(store, answer, changes, source):
    store.submit(make_feedback(answer, **changes))
    [row] = store.rows()
    assert row["label_source"] == source


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"label_source": "guess"}, "label_source must be one of prompt, confirmed, corrected"),
        ({"label_source": "confirmed", "true_label": 1}, "contradicts"),
        ({"label_source": "corrected"}, "contradicts"),  # label 7 is what the model said
    ],
)
def test_a_label_source_that_does_not_fit_is_refused(changes, reason):
    with pytest.raises(FeedbackError, match=reason):
        make_feedback(**{"label": changes.pop("true_label", 7), **changes})


def test_the_database_refuses_an_unknown_label_source(store):
    bad = Feedback(**{**make_feedback().to_row(), "label_source": "guess"})
    with pytest.raises(FeedbackError, match="refused"):
        store.submit(bad)
    assert store.count() == 0


def test_label_sources_survive_the_queue_and_old_lines_get_one(store):
    down = FeedbackStore(UNREACHABLE_URL, queue_file=store.queue_file)
    prompted = make_feedback(label=3, label_source="prompt")
    assert down.submit(prompted).status == "queued"
    before_0004 = json.loads(make_feedback(label=2).to_json())
    del before_0004["label_source"]  # queued by the previous release
    lying = {**json.loads(make_feedback(label=5).to_json()), "label_source": "confirmed"}
    with store.queue_file.open("a") as f:
        f.write(json.dumps(before_0004) + "\n" + json.dumps(lying) + "\n")
    assert down.queued()[0] == prompted
    assert store.flush_queue() == 2
    assert [(r["true_label"], r["label_source"]) for r in store.rows()] == [(3, "prompt"), (2, "corrected")]
    assert "contradicts" in store.rejected_file.read_text()


def test_migrating_to_0004_backfills_sources_and_keeps_prompted_labels(store):
    migrations.upgrade(store.engine, "0003")
    with store.engine.begin() as c:
        for i, (label, not_digit, rejected) in enumerate([(7, False, False), (1, False, False), (None, True, True)]):
            c.execute(
                text(
                    "INSERT INTO prediction_logs (submission_id, created_at, model_version, predicted, confidence,"
                    " probabilities, true_label, image, strokes, canvas_size, session_id, not_digit, rejected)"
                    " VALUES (:s, CURRENT_TIMESTAMP, 'm', 7, 0.9, '[]', :label, :image, '[]', 280, 's', :nd, :rej)"
                ),
                {"s": f"old-{i}", "label": label, "image": b"png", "nd": not_digit, "rej": rejected},
            )
    migrations.upgrade(store.engine)
    assert [r["label_source"] for r in store.rows()] == ["confirmed", "corrected", "confirmed"]
    migrations.downgrade(store.engine, "0003")  # no prompted rows: nothing to lose
    migrations.upgrade(store.engine)
    store.submit(make_feedback(label=4, label_source="prompt"))
    with pytest.raises(RuntimeError, match="1 stored answers were drawn to a prompt"):
        migrations.downgrade(store.engine, "0003")
    assert migrations.current_revision(store.engine) == "0004" and store.count() == 4


def test_label_counts_give_answers_and_model_errors_per_digit(store):
    for answer, changes in [(7, {}), (7, {}), (1, {}), (7, {"rejected": True}), (NOT_A_DIGIT, {})]:
        store.submit(make_feedback(answer, **changes))
    assert store.label_counts() == {7: (3, 1), 1: (1, 1)}  # "not a digit" answers have no digit


# --- the schema check a dashboard kernel makes ----------------------------------------------------


def test_the_schema_head_is_the_newest_migration():
    assert SCHEMA_HEAD == migrations.head_revision()


def test_a_store_at_the_newest_revision_does_not_import_alembic(store, tmp_path):
    store.submit(make_feedback(label=3))  # migrates a fresh database to the newest revision
    kernel = """
import sys
from digitlib.store import FeedbackStore
store = FeedbackStore(sys.argv[1], queue_file=sys.argv[2])
store.ensure_schema()
print(store.count(), "alembic" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", kernel, store.url, str(tmp_path / "q2.jsonl")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "False"]


def test_a_store_behind_the_newest_revision_still_migrates(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    migrations.upgrade(engine, "0003")
    store = FeedbackStore(url, queue_file=tmp_path / "q.jsonl")
    assert store.submit(make_feedback(label=5)).status == "saved"
    assert migrations.current_revision(engine) == SCHEMA_HEAD
    engine.dispose()
    store.dispose()
