"""Feedback rows written per second through FeedbackStore.submit (one transaction a row).

Writes to a scratch PostgreSQL database (created and dropped here) and to a temporary SQLite
file, with rows made from recorded pen drawings as the dashboard makes them.

    .venv/bin/python benchmarks/feedback_writes.py [--rows 500] [--postgres URL] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from digitlib import config
from digitlib.drawings import load_drawings
from digitlib.preprocess import strokes_to_input
from digitlib.store import Feedback, FeedbackStore

SCRATCH_DB = "digitlib_bench"


def make_rows(n: int) -> list[Feedback]:
    drawings = load_drawings(config.DRAWINGS_FILE.get())[:n]
    probabilities = [0.01] * 9 + [0.91]
    return [
        Feedback.create(
            strokes=d.strokes,
            true_label=d.label,
            probabilities=probabilities,
            image=strokes_to_input(d.strokes),
            model_version="bench",
            session_id="bench",
        )
        for d in drawings
    ]


def rows_per_second(url: str, rows: list[Feedback], queue: Path) -> float:
    store = FeedbackStore(url, queue_file=queue)
    store.ensure_schema()  # schema creation is not part of the figure
    start = time.perf_counter()
    for row in rows:
        assert store.submit(row).status == "saved"
    seconds = time.perf_counter() - start
    assert store.count() == len(rows)
    store.dispose()
    return len(rows) / seconds


def scratch_postgres(server_url: str, action: str) -> str:
    """Create or drop the scratch database on the server; returns its URL."""
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {SCRATCH_DB}"))
        if action == "create":
            connection.execute(text(f"CREATE DATABASE {SCRATCH_DB}"))
    admin.dispose()
    return make_url(server_url).set(database=SCRATCH_DB).render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--postgres", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    rows = make_rows(args.rows)
    result = {"rows": len(rows)}
    with tempfile.TemporaryDirectory() as tmp:
        queue = Path(tmp) / "queue.jsonl"
        result["sqlite_rows_per_second"] = round(rows_per_second(f"sqlite:///{tmp}/bench.db", rows, queue), 1)
        url = scratch_postgres(args.postgres, "create")
        try:
            fresh = [Feedback(**{**r.to_row(), "submission_id": uuid.uuid4().hex}) for r in rows]
            result["postgres_rows_per_second"] = round(rows_per_second(url, fresh, queue), 1)
        finally:
            scratch_postgres(args.postgres, "drop")
    for key, value in result.items():
        print(f"{key:>26}: {value}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
