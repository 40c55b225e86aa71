"""Engines for the store's URL: SQLite with write-ahead logging (readers never wait for the writer), or PostgreSQL.

SQLite gets its pragmas on every new connection (WAL, foreign keys on, a busy timeout instead of an immediate
"database is locked"); PostgreSQL a connect timeout, so a database that is down is noticed in seconds and the
audit writer spools instead of hanging.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

# How long a PostgreSQL connection attempt may take before the database counts as down.
CONNECT_TIMEOUT_S = 5
# How long an SQLite statement waits for another writer (another process on the same file) to finish.
SQLITE_BUSY_TIMEOUT_MS = 10_000


class StoreConfigError(ValueError):
    """NORMGATE_DATABASE_URL names a database this service cannot use."""


def describe_url(url: str) -> str:
    """The URL for logs and messages: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(an unparsable database URL)"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; an SQLite file's folder is created. Only SQLite and PostgreSQL are supported."""
    try:
        parsed = make_url(url)
    except Exception:
        raise StoreConfigError("NORMGATE_DATABASE_URL is not a database URL (e.g. postgresql+psycopg://…)") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise StoreConfigError("the SQLite store needs a file (an in-memory database is not shared by threads)")
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, pool_pre_ping=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if backend == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            parsed = parsed.set(drivername="postgresql+psycopg")
        connect_args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S}
        return create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args=connect_args)
    raise StoreConfigError(f"unsupported database {backend!r} in NORMGATE_DATABASE_URL; use sqlite or postgresql")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # an audit record acknowledged as written survives a power cut
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()
