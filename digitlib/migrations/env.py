"""Alembic environment: the connection given by digitlib.migrations, or DATABASE_URL (`alembic upgrade head`)."""

from __future__ import annotations

from alembic import context

from digitlib import config
from digitlib.store import _engine_for, metadata


def run_migrations(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite alters tables by copying them: batch mode does that for us.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    given = context.config.attributes.get("connection")
    if given is not None:
        run_migrations(given)
        return
    engine = _engine_for(context.config.get_main_option("sqlalchemy.url") or config.DATABASE_URL.get())
    try:
        with engine.begin() as connection:
            run_migrations(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run them against a database")
run_online()
