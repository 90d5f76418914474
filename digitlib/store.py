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
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import (
    JSON,
    Boolean,
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
    case,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError, ProgrammingError

from digitlib import config
from digitlib.preprocess import CANVAS_SIZE, MNIST_SIZE, DrawingError, validate_strokes

log = logging.getLogger(__name__)

DEFAULT_QUEUE_FILE = config.DATA_DIR / "feedback-queue.jsonl"
MAX_TEXT = 64  # submission and session ids
MAX_VERSION = 200
CONNECT_TIMEOUT_S = 3  # a visitor should not wait long for a database that is down
# The dashboard's connections: a lock held by someone else, or a runaway statement, sends the
# answer to the queue within seconds instead of leaving the visitor waiting.
LOCK_TIMEOUT_S = 3
STATEMENT_TIMEOUT_S = 10
# The answer "this is not a digit": stored as not_digit=True with true_label NULL, never as a class number.
NOT_A_DIGIT = "not a digit"
# Where a label came from (revision 0004): drawn to a prompt, or the visitor's verdict on the model's answer.
LABEL_SOURCES = ("prompt", "confirmed", "corrected")
# The newest revision in digitlib/migrations (tests/test_store.py keeps them equal): a database already
# there is recognised without importing alembic, which would cost each dashboard kernel ~9 MiB.
SCHEMA_HEAD = "0004"

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
    Column("true_label", SmallInteger, CheckConstraint("true_label BETWEEN 0 AND 9"), nullable=True),
    Column("image", LargeBinary, nullable=False),
    Column("strokes", JSON, nullable=False),
    Column("canvas_size", Integer, nullable=False),
    Column("session_id", String(MAX_TEXT), nullable=False),
    # Revision 0003: the visitor's "not a digit" answer, and the model's rejection as it was shown.
    Column("not_digit", Boolean, nullable=False, server_default=text("false")),
    Column("rejected", Boolean, nullable=False, server_default=text("false")),
    Column("not_digit_probability", Float, nullable=True),
    CheckConstraint(
        "(not_digit AND true_label IS NULL) OR (NOT not_digit AND true_label IS NOT NULL)",
        name="ck_prediction_logs_answer",
    ),
    # Revision 0004: "prompt", "confirmed" (the model was right) or "corrected" (see LABEL_SOURCES).
    Column("label_source", String(16), nullable=False),
    CheckConstraint("label_source IN ('prompt', 'confirmed', 'corrected')", name="ck_prediction_logs_label_source"),
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


def _answer(value) -> tuple[int | None, bool]:
    """(true_label, not_digit) for an answer: a digit 0-9 or NOT_A_DIGIT (None is a missing label, refused)."""
    if isinstance(value, str) and value == NOT_A_DIGIT:
        return None, True
    return _digit(value, "label"), False


def _label_source(value, label: int | None, not_digit: bool, predicted: int, rejected: bool) -> str:
    """The label's source: "prompt" when given, else whether the answer agrees with the model's."""
    agrees = (not_digit and rejected) or (not not_digit and not rejected and label == predicted)
    derived = "confirmed" if agrees else "corrected"
    if value is None:
        return derived
    if value not in LABEL_SOURCES:
        raise FeedbackError(f"label_source must be one of {', '.join(LABEL_SOURCES)}, got {value!r}")
    if value != "prompt" and value != derived:
        raise FeedbackError(f"label_source {value!r} contradicts the answer and the prediction ({derived})")
    return value


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise FeedbackError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def _optional_probability(value, name: str) -> float | None:
    if value is None:
        return None
    number = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    try:
        p = float(value) if number else math.nan
    except OverflowError:  # a 400-digit integer
        p = math.nan
    if not (math.isfinite(p) and 0 <= p <= 1):
        raise FeedbackError(f"{name} must be a number in [0, 1] or null, got {value!r}")
    return p


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
    true_label: int | None  # None when the answer is "not a digit"
    image: bytes
    strokes: list[list[list[float]]]
    session_id: str
    canvas_size: int = CANVAS_SIZE
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    not_digit: bool = False  # the visitor's answer: "not a digit"
    rejected: bool = False  # the model answered "not a digit" (what the visitor was shown)
    not_digit_probability: float | None = None  # the model's not-digit probability; None: the model had none
    label_source: str = "corrected"  # LABEL_SOURCES; Feedback.create derives or checks it

    @property
    def answer(self) -> int | str:
        return NOT_A_DIGIT if self.not_digit else self.true_label

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
        rejected: bool = False,
        not_digit_probability: float | None = None,
        label_source: str | None = None,
    ) -> Feedback:
        """Validate everything a browser could have got wrong; raises FeedbackError with the reason.

        `true_label` is a digit 0-9 or NOT_A_DIGIT; `rejected` and `not_digit_probability`
        record the prediction as it was made. `label_source` is "prompt" for a drawing made to a
        prompt; otherwise (None) it is derived: "confirmed" when the answer is the model's, else
        "corrected" (a "not a digit" answer is confirmed when the model rejected the drawing).
        """
        label, not_digit = _answer(true_label)
        try:
            arrays = validate_strokes(strokes, canvas_size)
        except DrawingError as e:
            raise FeedbackError(str(e)) from None
        probs = _probabilities(probabilities)
        predicted = int(np.argmax(probs))
        rejected = _flag(rejected, "rejected")
        return cls(
            submission_id=_short_text(uuid.uuid4().hex if submission_id is None else submission_id, "submission_id"),
            model_version=_short_text(model_version, "model_version", MAX_VERSION),
            predicted=predicted,
            confidence=probs[predicted],
            probabilities=probs,
            true_label=label,
            image=image_to_png(image),
            strokes=[[[round(float(x), 2), round(float(y), 2)] for x, y in a] for a in arrays],
            session_id=_short_text(session_id, "session_id"),
            canvas_size=int(canvas_size),
            not_digit=not_digit,
            rejected=rejected,
            not_digit_probability=_optional_probability(not_digit_probability, "not_digit_probability"),
            label_source=_label_source(label_source, label, not_digit, predicted, rejected),
        )

    def to_row(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        row = self.to_row()
        row["image"] = base64.b64encode(self.image).decode("ascii")
        row["created_at"] = self.created_at.isoformat()
        return json.dumps(row)

    @classmethod
    def from_json(cls, line: str | bytes) -> Feedback:
        """A queued row, checked as strictly as a new answer; raises FeedbackError with the reason."""
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:  # RecursionError: absurdly nested JSON
            raise FeedbackError(f"not JSON ({type(e).__name__}: {str(e)[:200]})") from None
        every = {f.name for f in fields(cls)}
        # Rows queued before revision 0003 lack its three fields: they are digit answers; rows
        # queued before 0004 lack label_source: it is derived as the migration backfills it.
        if not isinstance(row, dict) or not (every - {*QUEUE_FIELDS_0003, *QUEUE_FIELDS_0004} <= set(row) <= every):
            got = sorted(row)[:20] if isinstance(row, dict) else type(row).__name__
            raise FeedbackError(f"not a feedback row (fields {got})")
        not_digit = _flag(row.get("not_digit", False), "not_digit")
        if not_digit and row["true_label"] is not None:
            raise FeedbackError(f"a 'not a digit' answer carries no label, got {row['true_label']!r}")
        try:
            image = base64.b64decode(row["image"], validate=True)
            created_at = datetime.fromisoformat(row["created_at"])
        except (TypeError, ValueError) as e:
            raise FeedbackError(f"image or created_at unreadable: {e}") from None
        if created_at.tzinfo is None:
            raise FeedbackError("created_at must carry its time zone")
        _check_png(image)
        checked = cls.create(
            strokes=row["strokes"],
            true_label=NOT_A_DIGIT if not_digit else row["true_label"],
            probabilities=row["probabilities"],
            image=png_to_image(image),
            model_version=row["model_version"],
            session_id=row["session_id"],
            submission_id=row["submission_id"],
            canvas_size=_canvas_size(row["canvas_size"]),
            rejected=row.get("rejected", False),
            not_digit_probability=row.get("not_digit_probability"),
            label_source=row.get("label_source"),
        )
        if (checked.predicted, checked.strokes) != (row["predicted"], row["strokes"]):
            raise FeedbackError("predicted or strokes differ from what the row's own figures give")
        return replace(checked, image=image, created_at=created_at)


QUEUE_FIELDS_0003 = ("not_digit", "rejected", "not_digit_probability")
QUEUE_FIELDS_0004 = ("label_source",)


def _canvas_size(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 4 * CANVAS_SIZE:
        raise FeedbackError(f"canvas_size must be a whole number of pixels, got {value!r}")
    return value


def _check_png(data: bytes) -> None:
    """The image must be the 28x28 greyscale PNG image_to_png writes, nothing else."""
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            if image.size != (MNIST_SIZE, MNIST_SIZE) or image.mode != "L":
                raise FeedbackError(
                    f"image must be a {MNIST_SIZE}x{MNIST_SIZE} greyscale PNG, got {image.size} {image.mode}"
                )
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise FeedbackError(f"image is not a readable PNG ({e})") from None


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


def redact_url(url) -> str:
    """A database URL fit for a page, a log or a manifest: its password replaced by ***.

    The one redaction function. Textual, so it holds for URLs SQLAlchemy cannot parse (a typo,
    a stray space) and for an unescaped @ in a password: everything between the user name and
    the last @ goes.
    """
    text = str(url)
    at = text.rfind("@")
    if at < 0:
        return text
    slashes = text.find("//", 0, at)
    start = slashes + 2 if slashes >= 0 else text.find("/", 0, at) + 1  # "scheme:/user:pw@" too
    userinfo = text[start:at]
    if ":" not in userinfo:
        return text
    return f"{text[:start]}{userinfo.split(':', 1)[0]}:***{text[at:]}"


def resolve_database_url(url: str) -> str:
    """`url` with a relative SQLite path made absolute against the project root.

    Every entry point agrees on the file: the dashboard's kernels run in dashboards/, the CLI
    and notebooks wherever they are started. Other URLs come back unchanged (stripped).
    """
    url = str(url).strip()
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StoreConfigError(f"DATABASE_URL {redact_url(url)!r} is not an SQLAlchemy URL ({e})") from None
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return url
    path = Path(database).expanduser()
    if not path.is_absolute():
        path = Path(os.path.normpath(config.PROJ_ROOT / path))
    if str(path) == database:
        return url
    return parsed.set(database=str(path)).render_as_string(hide_password=False)


def _engine_for(url: str, timeouts: bool = False) -> Engine:
    """An engine for `url`; `timeouts` (the dashboard's) make a held lock or a slow statement fail fast."""
    parsed: URL = make_url(resolve_database_url(url))
    connect_args = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # The busy timeout: several dashboard kernels may write at once, but not wait for ever.
        connect_args["timeout"] = LOCK_TIMEOUT_S if timeouts else 10
    elif parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        if timeouts:
            # connect_args replace the URL's own `options` (a search_path, say): keep them.
            given = parsed.query.get("options", "")
            limits = f"-c lock_timeout={LOCK_TIMEOUT_S * 1000} -c statement_timeout={STATEMENT_TIMEOUT_S * 1000}"
            connect_args["options"] = f"{given if isinstance(given, str) else ' '.join(given)} {limits}".strip()
    try:
        engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError, ImportError) as e:
        raise StoreConfigError(f"DATABASE_URL {redact_url(url)}: {e}") from None
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

    def __init__(self, url: str | None = None, queue_file: str | Path | None = None, timeouts: bool = True):
        self.url = resolve_database_url(url or config.DATABASE_URL.get())
        self.engine = _engine_for(self.url, timeouts)
        self.queue_file = Path(queue_file) if queue_file else DEFAULT_QUEUE_FILE
        self._schema_ready = False

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)

    def ensure_schema(self) -> None:
        """Bring the database to the newest schema revision (digitlib/migrations), once per store.

        At the newest revision this only reads alembic_version, which the dashboard's
        least-privilege role may; changing the schema is the owner's job (`make migrate`).
        """
        if not self._schema_ready:
            if self._schema_revision() != SCHEMA_HEAD:
                from digitlib import migrations

                migrations.upgrade(self.engine)
            self._schema_ready = True

    def _schema_revision(self) -> str | None:
        """The revision alembic_version records; None without that table. A database that is down raises."""
        with self.engine.connect() as connection:
            try:
                return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except (OperationalError, ProgrammingError):  # no such table (SQLite, PostgreSQL)
                return None

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
        """Store one answer, or queue it on disk; raises FeedbackError only when it can do neither.

        Whatever stops the write (database down, a held lock, a read-only file, a schema the
        role may not migrate) queues the answer; the visitor is told which happened.
        """
        try:
            new = self._write([feedback])
        except IntegrityError as e:
            # A check constraint, not a duplicate (those are skipped): a bug worth seeing.
            raise FeedbackError(f"the database refused the row: {e.orig}") from None
        except Exception as e:  # noqa: BLE001 - any failure to store must keep the answer
            log.warning("feedback store %s failed, queueing %s: %s", self.safe_url, feedback.submission_id, e)
            try:
                self._enqueue(feedback)
            except OSError as queue_error:
                log.error(
                    "feedback queue %s unwritable, %s not kept: %s",
                    self.queue_file,
                    feedback.submission_id,
                    queue_error,
                )
                raise FeedbackError(
                    "the database cannot take answers and the server cannot keep them either; try again later"
                ) from None
            return SubmitResult(
                "queued",
                feedback.submission_id,
                "The database is unreachable: your answer is kept on this server and will be saved when it is back.",
            )
        replayed = self._flush_quietly()
        if not new:
            return SubmitResult("duplicate", feedback.submission_id, "This drawing was already saved.", replayed)
        return SubmitResult("saved", feedback.submission_id, f"Saved as {feedback.answer}. Thank you!", replayed)

    # --- the on-disk queue ------------------------------------------------------------------

    @property
    def rejected_file(self) -> Path:
        """Queue lines that can never be stored, one JSON object each with the reason."""
        return self.queue_file.with_suffix(".rejected")

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
        with self._locked_queue("ab+") as f:
            f.seek(0, os.SEEK_END)
            torn = False
            if f.tell():
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            # A torn last line (a crash mid-write) stays alone: never glue this row to it.
            f.write((b"\n" if torn else b"") + feedback.to_json().encode("ascii") + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def queued(self) -> list[Feedback]:
        """The rows waiting in the queue file (lines that cannot be stored are left out)."""
        if not self.queue_file.is_file():
            return []
        with self._locked_queue("rb") as f:
            return [row for row, _ in self._parse_queue(f.read())[0]]

    def _parse_queue(self, data: bytes) -> tuple[list[tuple[Feedback, bytes]], list[tuple[bytes, str]]]:
        """Good rows with their lines, and each bad line with its reason; one never stops the others."""
        rows, bad = [], []
        lines = data.split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                if number == len(lines):  # no newline after it: a write cut short
                    raise FeedbackError("torn line (no newline at the end of the queue)")
                rows.append((Feedback.from_json(line.decode("utf-8")), line))
            except (UnicodeDecodeError, FeedbackError) as e:
                reason = f"line {number}: {e}"[:500]
                log.error("feedback queue %s: %s; kept aside in %s", self.queue_file, reason, self.rejected_file.name)
                bad.append((line, reason))
        return rows, bad

    def _reject(self, bad: Sequence[tuple[bytes, str]]) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self.rejected_file.open("a") as f:
            for line, reason in bad:
                record = {"rejected_at": now, "reason": reason}
                try:
                    record["line"] = line.decode("utf-8")
                except UnicodeDecodeError:
                    record["line_base64"] = base64.b64encode(line).decode("ascii")
                f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def flush_queue(self) -> int:
        """Write every queued row (skipping ones already stored); returns how many were new.

        Raises the database error if it cannot be written to; the good rows then stay queued.
        A line that can never be stored (torn, not UTF-8, invalid, refused by the database)
        moves to `rejected_file` with its reason, alone: the other rows still go in.
        """
        if not self.queue_file.is_file() or self.queue_file.stat().st_size == 0:
            return 0
        with self._locked_queue("rb+") as f:
            parsed, bad = self._parse_queue(f.read())
            if bad:  # set aside at once, so a database that is down does not keep them in the way
                self._reject(bad)
                self._rewrite(f, b"".join(line + b"\n" for _, line in parsed))
            rows = [row for row, _ in parsed]
            new = 0
            if rows:
                try:
                    new = self._write(rows)
                except IntegrityError:
                    new, refused = self._write_one_by_one(rows)
                    if refused:
                        self._reject(refused)
            self._rewrite(f, b"")
        if rows or bad:
            log.info("feedback queue: %d rows replayed, %d new, %d lines set aside", len(rows), new, len(bad))
        return new

    @staticmethod
    def _rewrite(f, data: bytes) -> None:
        f.seek(0)
        f.truncate()
        f.write(data)
        f.flush()
        os.fsync(f.fileno())

    def _write_one_by_one(self, rows: Sequence[Feedback]) -> tuple[int, list[tuple[bytes, str]]]:
        new, refused = 0, []
        for row in rows:
            try:
                new += self._write([row])
            except IntegrityError as e:
                refused.append((row.to_json().encode(), f"refused by the database: {e.orig}"[:500]))
        return new, refused

    def _flush_quietly(self) -> int:
        try:
            return self.flush_queue()
        except Exception as e:  # noqa: BLE001 - the answer is stored; the queue waits for the next try
            log.warning("feedback queue not flushed yet: %s", e)
            return 0

    # --- reading back -----------------------------------------------------------------------

    def count(self) -> int:
        self.ensure_schema()
        with self.engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(prediction_logs)).scalar_one()

    def label_counts(self) -> dict[int, tuple[int, int]]:
        """{digit: (stored digit answers, how many of them the model got wrong)}, one grouped query."""
        self.ensure_schema()
        label = prediction_logs.c.true_label
        # Wrong: another digit, or "not a digit" for a digit.
        wrong = func.sum(case((or_(prediction_logs.c.predicted != label, prediction_logs.c.rejected), 1), else_=0))
        query = select(label, func.count(), wrong).where(label.is_not(None)).group_by(label)
        with self.engine.connect() as connection:
            return {int(d): (int(n), int(w or 0)) for d, n, w in connection.execute(query)}

    def rows(self) -> list[dict]:
        """Every stored row as a dict, oldest first."""
        self.ensure_schema()
        with self.engine.connect() as connection:
            result = connection.execute(select(prediction_logs).order_by(prediction_logs.c.id))
            return [dict(r._mapping) for r in result]

    def dispose(self) -> None:
        self.engine.dispose()
