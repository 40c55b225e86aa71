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
