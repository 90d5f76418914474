"""`python -m digitlib.migrations upgrade [--grant-to ROLE] | current | heads` against DATABASE_URL."""

from __future__ import annotations

import argparse
import sys

from sqlalchemy.exc import SQLAlchemyError

from digitlib import config
from digitlib.migrations import MigrationError, current_revision, grant_to_dashboard, head_revision, upgrade
from digitlib.store import StoreConfigError, _engine_for, redact_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m digitlib.migrations", description=__doc__)
    parser.add_argument("action", choices=["upgrade", "current", "heads"])
    parser.add_argument("--url", default=None, help=f"SQLAlchemy URL (default: ${config.DATABASE_URL.name})")
    parser.add_argument("--grant-to", default=None, help="PostgreSQL role given SELECT/INSERT on the feedback table")
    args = parser.parse_args(argv)
    if args.action == "heads":
        print(head_revision())
        return 0
    url = args.url or config.DATABASE_URL.get()
    try:
        engine = _engine_for(url)
    except StoreConfigError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    try:
        if args.action == "upgrade":
            upgrade(engine)
            if args.grant_to:
                grant_to_dashboard(engine, args.grant_to)
        print(f"{redact_url(url)}: revision {current_revision(engine)}")
    except (MigrationError, ValueError, SQLAlchemyError) as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        print(f"{parser.prog}: error: {redact_url(url)}: {reason}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
