"""Versioned schema of the feedback store (Alembic), applied in code or with `alembic`.

`upgrade(engine)` brings a database to the newest revision: a fresh one gets every table, an
older one only the steps it lacks, so its rows stay. A database made before migrations existed
(store.py's old `create_all`) holds exactly revision 0001's schema: it is stamped 0001 first.

`python -m digitlib.migrations upgrade [--grant-to ROLE]` is the deploy step (run by the owner
role, never the dashboard's); `--grant-to` then gives a least-privilege role what the dashboard
needs and nothing more.
"""

from __future__ import annotations

import fcntl
import re
import threading
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

SCRIPT_DIR = Path(__file__).resolve().parent
BASELINE = "0001"  # the schema store.py created before migrations
TABLE = "prediction_logs"
# pg_advisory_xact_lock key: kernels starting together migrate one at a time.
MIGRATION_LOCK_KEY = 7_406_310
_ALEMBIC_LOCK = threading.Lock()
ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at this package; env.py uses `connection` when given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


class MigrationError(RuntimeError):
    """The schema needs a change this connection's role may not make."""


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to `revision` in one transaction, one migrator at a time.

    A database already at the newest revision is only read: no lock is taken, so a dashboard
    never waits on a migrator or on whoever holds its lock. Alembic's `context` is
    process-global (a thread lock); kernels are processes (PostgreSQL: a lock on alembic_version
    only the owner may take, an advisory lock on a fresh database; SQLite: a lock file).
    """
    if revision == "head" and _at_head(engine):
        return
    with _ALEMBIC_LOCK, _sqlite_file_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            _lock_for_migration(connection)
        cfg = alembic_config(connection)
        if _made_before_migrations(connection):
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, revision)


def _at_head(engine: Engine) -> bool:
    with engine.connect() as connection:
        if _made_before_migrations(connection):
            return False
        return MigrationContext.configure(connection).get_current_revision() == head_revision()


def _lock_for_migration(connection: Connection) -> None:
    """Refuse clearly when this role may not change the schema; else take the migration lock.

    LOCK TABLE in EXCLUSIVE mode needs UPDATE, DELETE or TRUNCATE on alembic_version, which the
    dashboard's role lacks (it may only read it): that role can neither migrate nor hold up a
    migration. On a fresh database (no alembic_version yet) kernels queue on an advisory lock.
    """
    may_create = connection.execute(text("SELECT has_schema_privilege(current_schema(), 'CREATE')")).scalar()
    if not may_create:
        user = connection.execute(text("SELECT current_user")).scalar()
        raise MigrationError(
            f"the feedback schema is not at revision {head_revision()} and role {user!r} may not change it: "
            "run `make migrate` as the database owner"
        )
    if inspect(connection).has_table("alembic_version"):
        connection.execute(text("LOCK TABLE alembic_version IN EXCLUSIVE MODE"))
    else:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


@contextmanager
def _sqlite_file_lock(engine: Engine):
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    with open(f"{database}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def downgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), revision)


def _made_before_migrations(connection: Connection) -> bool:
    tables = set(inspect(connection).get_table_names())
    return TABLE in tables and "alembic_version" not in tables


def grant_to_dashboard(engine: Engine, role: str) -> None:
    """Least privilege for the dashboard's role: read and add feedback rows, nothing else.

    Role names cannot be bound parameters in GRANT, so the name is checked against a strict
    pattern and quoted.
    """
    if not ROLE_NAME.match(role):
        raise ValueError(f"role name {role!r} must match {ROLE_NAME.pattern}")
    with engine.begin() as connection:
        for statement in (
            f'GRANT SELECT, INSERT ON {TABLE} TO "{role}"',
            f'GRANT USAGE ON SEQUENCE {TABLE}_id_seq TO "{role}"',
            # Reading the version lets the dashboard check the schema is current, not change it.
            f'GRANT SELECT ON alembic_version TO "{role}"',
        ):
            connection.execute(text(statement))
