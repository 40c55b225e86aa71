"""Run the tests that record faults and bad inputs and write docs/fault-table.md.

    .venv/bin/python tests/service/make_fault_table.py [OUT]

The table is written only from a full, passing run of these tests (pytest's exit status is passed on).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECORDING_TESTS = [
    "tests/service/api/test_security.py",
    "tests/service/test_faults.py",
    "tests/service/serving/test_overload.py",
    "tests/service/api/test_schema_fuzz.py",
    "tests/service/api/test_evaluate_routes.py",
    "tests/service/test_hostile_input.py",
    "tests/service/test_connections.py",
    "tests/service/evaluation/test_evaluate.py::test_resume_after_sigkill_gives_each_row_once_and_the_uninterrupted_counts",
    "tests/service/evaluation/test_jobs.py::test_sigkill_of_the_server_leaves_no_job_process_and_the_restart_finishes_the_job_once",
]


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "fault-table.md"
    env = dict(os.environ, NORMGATE_FAULT_TABLE=str(out.resolve()))
    return subprocess.call(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *RECORDING_TESTS], cwd=ROOT, env=env
    )


if __name__ == "__main__":
    sys.exit(main())
