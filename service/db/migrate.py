"""Schema migrations of the store with Alembic, run programmatically (no alembic.ini): at start-up, and by
``python -m service.db upgrade``.

Several replicas may start at once against one PostgreSQL database: the migration runs under a
transaction-level advisory lock, so one replica migrates and the others find the schema current. SQLite files
are migrated under an exclusive file lock beside the database for the same reason. Upgrading a database that
is already at the head revision does nothing.
"""

from __future__ import annotations

import fcntl
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from service.db.schema import VERSION_TABLE

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# A fixed 64-bit key for pg_advisory_xact_lock, derived from the application's name.
_ADVISORY_KEY = zlib.crc32(b"normgate-store-migrations")


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert head is not None  # the package ships its revisions
    return head


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the store's migration lock until it commits."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        assert database  # make_engine refuses in-memory SQLite
        lock_path = Path(database).with_name(Path(database).name + ".migrate.lock")
        with open(lock_path, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                with engine.begin() as connection:
                    yield connection
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
        return
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_KEY})
        yield connection


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate up to ``revision``; returns the revision the database is at afterwards."""
    with _migration_lock(engine) as connection:
        command.upgrade(_config(connection), revision)
    return current_revision(engine)


def downgrade(engine: Engine, revision: str) -> str | None:
    """Migrate down to ``revision`` (``base`` removes every table of the store)."""
    with _migration_lock(engine) as connection:
        command.downgrade(_config(connection), revision)
    return current_revision(engine)
