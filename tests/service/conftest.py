"""Fixtures of the service tests: tiny seeded checkpoints and the fault table of docs/fault-table.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_checkpoint


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_checkpoint(root / "default", seed=0)
    make_checkpoint(root / "wide", seed=1, input_size=[64, 96], threshold=0.995, version="test-wide")
    return root


# -- the fault table of docs/security.md (tests/service/fault_table.py) ---------------------------------------


@pytest.fixture
def fault_row(request):
    """``fault_row(area, case, expected, observed)`` records one tried fault for docs/fault-table.md."""
    from tests.service.fault_table import ROWS, FaultRow

    def record(area: str, case: str, expected: str, observed: str) -> None:
        module = request.node.module.__name__.rsplit(".", 1)[-1]
        ROWS.append(FaultRow(area, case, expected, observed, f"{module}::{request.node.originalname}"))

    return record


def pytest_sessionfinish(session, exitstatus):
    from tests.service.fault_table import write_if_requested

    if exitstatus == 0:  # a table from a failing run would show outcomes the suite did not accept
        write_if_requested()


# -- the store's databases: SQLite in a temporary folder, and a real PostgreSQL (tests/postgres.py) ------------


@pytest.fixture(scope="session")
def postgres_server():
    from tests.postgres import PostgresServer, require_postgres

    server = PostgresServer(require_postgres())
    server.start()
    yield server
    server.remove()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty PostgreSQL database of the session's server."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """Each test that takes it runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'normgate.sqlite3'}"
    return request.getfixturevalue("postgres_url")
