"""The feedback store: one row per answer a visitor gives the dashboard (SQLAlchemy 2).

DATABASE_URL (config.DATABASE_URL) picks the database: an SQLite file by default, PostgreSQL
with postgresql+psycopg2://...; the same code serves both and migrates the schema to the newest
revision on first use (Alembic, digitlib/migrations: the Table below is the newest revision).

Nothing is lost when the database is down: the row goes to a local queue file (JSON lines,
fsynced) and is written, exactly once, on the next successful write or on `flush_queue()`.
Exactly once because every submission carries a client-made `submission_id` that is unique in
the table, and inserts skip an id that is already there.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import logging
import math
import os
import uuid
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import (
    JSON,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    create_engine,
    event,
    func,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, OperationalError

from digitlib import config
from digitlib.preprocess import CANVAS_SIZE, MNIST_SIZE, DrawingError, validate_strokes

log = logging.getLogger(__name__)

DEFAULT_QUEUE_FILE = config.DATA_DIR / "feedback-queue.jsonl"
MAX_TEXT = 64  # submission and session ids
MAX_VERSION = 200
CONNECT_TIMEOUT_S = 3  # a visitor should not wait long for a database that is down

metadata = MetaData()
prediction_logs = Table(
    "prediction_logs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("submission_id", String(MAX_TEXT), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("model_version", String(MAX_VERSION), nullable=False),
    Column("predicted", SmallInteger, CheckConstraint("predicted BETWEEN 0 AND 9"), nullable=False),
    Column("confidence", Float, nullable=False),
    Column("probabilities", JSON, nullable=False),
    Column("true_label", SmallInteger, CheckConstraint("true_label BETWEEN 0 AND 9"), nullable=False),
    Column("image", LargeBinary, nullable=False),
    Column("strokes", JSON, nullable=False),
    Column("canvas_size", Integer, nullable=False),
    Column("session_id", String(MAX_TEXT), nullable=False),
)


class FeedbackError(ValueError):
    """Feedback that cannot be stored as given (bad label, empty or absurd drawing...)."""


class StoreConfigError(ValueError):
    """A DATABASE_URL that is not a usable SQLAlchemy URL."""


def _digit(value, name: str) -> int:
    # bool is an int in Python; a True label is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value <= 9:
        raise FeedbackError(f"{name} must be a digit 0-9, got {value!r}")
    return int(value)


def _short_text(value, name: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise FeedbackError(f"{name} must be a non-empty string of at most {limit} characters, got {value!r}")
    return value


def _probabilities(values) -> list[float]:
    probs = [float(p) for p in np.asarray(values, dtype=np.float64).reshape(-1)]
    if len(probs) != 10 or not all(math.isfinite(p) and 0 <= p <= 1 for p in probs):
        raise FeedbackError(f"probabilities must be ten numbers in [0, 1], got {values!r}")
    if abs(sum(probs) - 1) > 1e-3:
        raise FeedbackError(f"probabilities must sum to 1, they sum to {sum(probs):.4f}")
    return probs


def image_to_png(image) -> bytes:
    """A 28x28 uint8 model input (tensor or array) -> PNG bytes (8-bit greyscale)."""
    array = np.asarray(image)
    if array.shape != (MNIST_SIZE, MNIST_SIZE) or array.dtype != np.uint8:
        raise FeedbackError(f"image must be a {MNIST_SIZE}x{MNIST_SIZE} uint8 array, got {array.shape} {array.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def png_to_image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


@dataclass(frozen=True)
class Feedback:
    """One validated answer, ready to store. Build it with `Feedback.create`."""

    submission_id: str
    model_version: str
    predicted: int
    confidence: float
    probabilities: list[float]
    true_label: int
    image: bytes
    strokes: list[list[list[float]]]
    session_id: str
    canvas_size: int = CANVAS_SIZE
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def create(
        cls,
        *,
        strokes,
        true_label,
        probabilities,
        image,
        model_version: str,
        session_id: str,
        submission_id: str | None = None,
        canvas_size: int = CANVAS_SIZE,
    ) -> Feedback:
        """Validate everything a browser could have got wrong; raises FeedbackError with the reason."""
        try:
            arrays = validate_strokes(strokes, canvas_size)
        except DrawingError as e:
            raise FeedbackError(str(e)) from None
        probs = _probabilities(probabilities)
        predicted = int(np.argmax(probs))
        return cls(
            submission_id=_short_text(uuid.uuid4().hex if submission_id is None else submission_id, "submission_id"),
            model_version=_short_text(model_version, "model_version", MAX_VERSION),
            predicted=predicted,
            confidence=probs[predicted],
            probabilities=probs,
            true_label=_digit(true_label, "label"),
            image=image_to_png(image),
            strokes=[[[round(float(x), 2), round(float(y), 2)] for x, y in a] for a in arrays],
            session_id=_short_text(session_id, "session_id"),
            canvas_size=int(canvas_size),
        )

    def to_row(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        row = self.to_row()
        row["image"] = base64.b64encode(self.image).decode("ascii")
        row["created_at"] = self.created_at.isoformat()
        return json.dumps(row)

    @classmethod
    def from_json(cls, line: str) -> Feedback:
        row = json.loads(line)
        row["image"] = base64.b64decode(row["image"])
        row["created_at"] = datetime.fromisoformat(row["created_at"])
        return cls(**row)


@dataclass(frozen=True)
class SubmitResult:
    """What happened to a submission: "saved", "duplicate" (already stored) or "queued"."""

    status: str
    submission_id: str
    message: str
    replayed: int = 0  # queued rows written along with this one

    @property
    def stored(self) -> bool:
        return self.status in ("saved", "duplicate")


def _engine_for(url: str) -> Engine:
    try:
        parsed: URL = make_url(url)
    except ArgumentError as e:
        raise StoreConfigError(f"DATABASE_URL {url!r} is not an SQLAlchemy URL ({e})") from None
    connect_args = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        connect_args["timeout"] = 10  # several dashboard kernels may write at once
    elif parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError, ImportError) as e:
        raise StoreConfigError(f"DATABASE_URL {parsed.render_as_string()}: {e}") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        event.listen(engine, "connect", _write_ahead_log)
    return engine


def _write_ahead_log(dbapi_connection, _record) -> None:
    # WAL: a notebook reading the file does not block the kernels writing to it, and commits are shorter.
    dbapi_connection.execute("PRAGMA journal_mode=WAL")


def _insert_ignoring_duplicates(engine: Engine):
    """INSERT that skips a submission_id already stored (ON CONFLICT DO NOTHING)."""
    dialect = {"postgresql": postgresql, "sqlite": sqlite}.get(engine.dialect.name)
    if dialect is None:
        return None
    return dialect.insert(prediction_logs).on_conflict_do_nothing(index_elements=["submission_id"])


class FeedbackStore:
    """Writes feedback rows to DATABASE_URL, queueing them on disk while it is unreachable."""

    def __init__(self, url: str | None = None, queue_file: str | Path | None = None):
        self.url = url or config.DATABASE_URL.get()
        self.engine = _engine_for(self.url)
        self.queue_file = Path(queue_file) if queue_file else DEFAULT_QUEUE_FILE
        self._schema_ready = False

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def ensure_schema(self) -> None:
        """Bring the database to the newest schema revision (digitlib/migrations), once per store.

        At the newest revision this only reads alembic_version, which the dashboard's
        least-privilege role may; changing the schema is the owner's job (`make migrate`).
        """
        if not self._schema_ready:
            from digitlib import migrations

            migrations.upgrade(self.engine)
            self._schema_ready = True

    def _write(self, rows: Sequence[Feedback]) -> int:
        """Insert rows in one transaction (all or none); returns how many were new."""
        self.ensure_schema()
        statement = _insert_ignoring_duplicates(self.engine)
        new = 0
        with self.engine.begin() as connection:
            for row in rows:
                if statement is not None:
                    new += connection.execute(statement, row.to_row()).rowcount
                    continue
                # Other databases: look first; the unique constraint still guards a race.
                taken = select(prediction_logs.c.id).where(prediction_logs.c.submission_id == row.submission_id)
                if connection.execute(taken).first() is None:
                    connection.execute(insert(prediction_logs), row.to_row())
                    new += 1
        return new

    def submit(self, feedback: Feedback) -> SubmitResult:
        """Store one answer; queue it on disk if the database cannot be reached."""
        try:
            new = self._write([feedback])
        except IntegrityError as e:
            # A check constraint, not a duplicate (those are skipped): a bug worth seeing.
            raise FeedbackError(f"the database refused the row: {e.orig}") from None
        except (OperationalError, DBAPIError) as e:
            log.warning("feedback store %s unreachable, queueing %s: %s", self.safe_url, feedback.submission_id, e)
            self._enqueue(feedback)
            return SubmitResult(
                "queued",
                feedback.submission_id,
                "The database is unreachable: your answer is kept on this server and will be saved when it is back.",
            )
        replayed = self._flush_quietly()
        if not new:
            return SubmitResult("duplicate", feedback.submission_id, "This drawing was already saved.", replayed)
        return SubmitResult("saved", feedback.submission_id, f"Saved as {feedback.true_label}. Thank you!", replayed)

    # --- the on-disk queue ------------------------------------------------------------------

    @contextmanager
    def _locked_queue(self, mode: str):
        self.queue_file.parent.mkdir(parents=True, exist_ok=True)
        with self.queue_file.open(mode) as f:
            # Each visitor has a kernel of its own: they share the file, one at a time.
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield f
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _enqueue(self, feedback: Feedback) -> None:
        with self._locked_queue("a") as f:
            f.write(feedback.to_json() + "\n")
            f.flush()
            os.fsync(f.fileno())

    def queued(self) -> list[Feedback]:
        """The rows waiting in the queue file (unreadable lines are left out)."""
        if not self.queue_file.is_file():
            return []
        with self._locked_queue("r") as f:
            return self._parse_queue(f.read().splitlines())[0]

    def _parse_queue(self, lines: list[str]) -> tuple[list[Feedback], list[str]]:
        rows, bad = [], []
        for line in filter(str.strip, lines):
            try:
                rows.append(Feedback.from_json(line))
            except (ValueError, KeyError, TypeError) as e:
                log.error("feedback queue %s: unreadable line kept aside: %s", self.queue_file, e)
                bad.append(line)
        return rows, bad

    def flush_queue(self) -> int:
        """Write every queued row (skipping ones already stored); returns how many were new.

        Raises the database error if it is still unreachable; the queue is then left as it was.
        Lines that cannot be parsed (a torn write) move to `<queue>.rejected` rather than vanish.
        """
        if not self.queue_file.is_file() or self.queue_file.stat().st_size == 0:
            return 0
        with self._locked_queue("r+") as f:
            rows, bad = self._parse_queue(f.read().splitlines())
            new = self._write(rows) if rows else 0
            if bad:
                with self.queue_file.with_suffix(".rejected").open("a") as rejected:
                    rejected.write("\n".join(bad) + "\n")
            f.seek(0)
            f.truncate()
            os.fsync(f.fileno())
        if rows:
            log.info("feedback queue: %d rows replayed, %d new", len(rows), new)
        return new

    def _flush_quietly(self) -> int:
        try:
            return self.flush_queue()
        except (OperationalError, DBAPIError) as e:
            log.warning("feedback queue not flushed yet: %s", e)
            return 0

    # --- reading back -----------------------------------------------------------------------

    def count(self) -> int:
        self.ensure_schema()
        with self.engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(prediction_logs)).scalar_one()

    def rows(self) -> list[dict]:
        """Every stored row as a dict, oldest first."""
        self.ensure_schema()
        with self.engine.connect() as connection:
            result = connection.execute(select(prediction_logs).order_by(prediction_logs.c.id))
            return [dict(r._mapping) for r in result]

    def drawings(self):
        """Stored answers as drawings (strokes + true label) for evaluation or training.

        They go through the same preprocess.strokes_to_input path as the dashboard's input.
        """
        from digitlib.drawings import Drawing

        return [Drawing(r["strokes"], r["true_label"], "feedback", r["session_id"]) for r in self.rows()]

    def dispose(self) -> None:
        self.engine.dispose()
