"""A real PostgreSQL server for the tests: Debian's ``postgresql`` package on a temporary data directory and port.

``initdb`` and ``postgres`` refuse to run as root, which CI is: there they run as the ``postgres`` user
(``runuser -u postgres``), on a data directory under /tmp owned by that user. Outside CI a missing installation
skips the tests that need it, with the reason; under ``CI=true`` it fails them (``.ci/run`` installs the package
from ``.ci/apt-packages.txt``).

``stop()`` and ``start()`` take the server down and up again on the same data and port, for outage tests.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from load_tests.driver import free_port


def postgres_bindir() -> Path | None:
    """The folder with initdb/pg_ctl: ``pg_config --bindir``, else the newest /usr/lib/postgresql/<ver>/bin."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            bindir = Path(
                subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
            )
            if (bindir / "initdb").is_file():
                return bindir
        except (OSError, subprocess.CalledProcessError):
            pass
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def require_postgres() -> Path:
    bindir = postgres_bindir()
    problem = None
    if bindir is None:
        problem = "PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)"
    elif os.geteuid() == 0 and shutil.which("runuser") is None:
        problem = "running as root and runuser is missing: initdb cannot run as root"
    elif os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            problem = "running as root and there is no postgres user to run initdb as"
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {problem}")
        pytest.skip(problem)
    assert bindir is not None
    return bindir


class PostgresServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="normgate-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        self.socket_dir.mkdir()
        if self.as_postgres:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.socket_dir, "postgres")
        self._run(
            self.bindir / "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        )

    def _run(self, *args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(a) for a in args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        self._run(self.bindir / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop", check=False)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
