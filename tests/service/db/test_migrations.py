"""The store's migrations: up to the head, idempotent, down to nothing and up again, on SQLite and PostgreSQL; the
migrated schema is exactly service/db/schema.py; concurrent upgrades (replicas starting together) do not collide;
``python -m service.db``."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from service.db.engine import make_engine
from service.db.migrate import current_revision, downgrade, head_revision, upgrade
from service.db.schema import VERSION_TABLE, metadata

TABLES = {"audit_records", "verdicts", "result_instances"}


def _tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {VERSION_TABLE}


def test_upgrade_is_idempotent_and_downgrade_removes_every_table(store_url):
    engine = make_engine(store_url)
    assert current_revision(engine) is None and _tables(engine) == set()
    assert upgrade(engine) == head_revision() == "0002"
    assert _tables(engine) == TABLES
    assert upgrade(engine) == "0002"  # again: nothing to do, nothing fails
    assert downgrade(engine, "0001") == "0001"
    assert _tables(engine) == {"audit_records", "verdicts"}
    assert downgrade(engine, "base") is None
    assert _tables(engine) == set()
    assert upgrade(engine) == "0002" and _tables(engine) == TABLES
    engine.dispose()


def test_migrated_schema_is_the_schema_module(store_url):
    engine = make_engine(store_url)
    upgrade(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        differences = compare_metadata(context, metadata)
    engine.dispose()
    assert differences == []


def test_replicas_upgrading_at_once_end_at_the_head(store_url):
    engines = [make_engine(store_url) for _ in range(3)]
    results: list[object] = []

    def run(engine):
        try:
            results.append(upgrade(engine))
        except Exception as exc:  # recorded, asserted below
            results.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for engine in engines:
        engine.dispose()
    assert results == ["0002", "0002", "0002"]


def test_cli_upgrade_current_downgrade(tmp_path: Path, monkeypatch, capsys):
    """``python -m service.db`` (its main(), in-process: a subprocess spends its time importing torch)."""
    from service.config import get_settings
    from service.db.__main__ import main

    for name in [k for k in os.environ if k.startswith("NORMGATE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("NORMGATE_STATE_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        assert main(["upgrade"]) == 0
        assert f"sqlite:///{tmp_path}/normgate.sqlite3: at revision 0002" in capsys.readouterr().out
        assert main(["current"]) == 0
        assert "at revision 0002; newest 0002" in capsys.readouterr().out
        assert main(["downgrade", "base"]) == 0
        assert "base (no tables)" in capsys.readouterr().out

        monkeypatch.setenv("NORMGATE_DATABASE_URL", "postgresql+psycopg://normgate:s3cret@127.0.0.1:1/none")
        get_settings.cache_clear()
        assert main(["upgrade"]) == 2
        err = capsys.readouterr().err
        assert "normgate: error: postgresql+psycopg://normgate:***@127.0.0.1:1/none: OperationalError" in err
        assert "s3cret" not in err and "Traceback" not in err
    finally:
        get_settings.cache_clear()
