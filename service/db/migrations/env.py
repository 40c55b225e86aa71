"""Alembic's environment: runs on the connection ``service.db.migrate`` hands over (online mode only)."""

from __future__ import annotations

from alembic import context

from service.db.schema import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the store's migrations with `python -m service.db upgrade`, not the alembic command")
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
