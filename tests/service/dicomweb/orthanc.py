"""A real Orthanc and a real NormGate for the end-to-end tests, on loopback ports picked at test time.

Orthanc 1.10 with the DICOMweb plugin comes from Debian's ``orthanc`` and ``orthanc-dicomweb``, ``storescu`` from
``dcmtk`` (``.ci/run`` installs them). Its configuration and Lua script are the committed ones of
``deploy/orthanc/`` (the ones docs/integration.md shows), with ports, paths and NormGate's URL filled in.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import REPO

ORTHANC_DIR = REPO / "deploy" / "orthanc"
PLUGIN_GLOBS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*", "/usr/lib/orthanc/libOrthancDicomWeb.so*")


def dicomweb_plugin() -> str | None:
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


# Under CI=true .ci/run has installed them: a missing one must fail the run, not skip it silently.
requires_orthanc = pytest.mark.skipif(
    not (shutil.which("Orthanc") and shutil.which("storescu") and dicomweb_plugin())
    and os.environ.get("CI", "").lower() != "true",
    reason="needs Debian's orthanc, orthanc-dicomweb and dcmtk (.ci/run installs them)",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, logs: list[Path]) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = condition()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.25)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in logs if p.exists())
    raise AssertionError(f"{what} not within {timeout_s} s\n{tails}")


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


class Orthanc:
    """deploy/orthanc/orthanc.json and forward-to-normgate.lua on loopback; ``start``/``stop`` keep the storage."""

    def __init__(self, root: Path, normgate_url: str, **overrides: Any) -> None:
        self.root = root
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.log = root / "orthanc.log"
        self.process: subprocess.Popen | None = None
        lua = root / "forward-to-normgate.lua"
        lua.write_text((ORTHANC_DIR / "forward-to-normgate.lua").read_text())
        config = json.loads((ORTHANC_DIR / "orthanc.json").read_text())
        storage = str(root / "orthanc-db")
        config.update(
            StorageDirectory=storage,
            IndexDirectory=storage,
            HttpPort=self.http_port,
            DicomPort=self.dicom_port,
            Plugins=[dicomweb_plugin()],
            LuaScripts=[str(lua)],
            **overrides,
        )
        config["DicomWeb"]["Servers"]["normgate"] = [normgate_url]
        self.config = root / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=2))

    def start(self, http: httpx.Client) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                ["Orthanc", str(self.config)], cwd=self.root, stdout=out, stderr=subprocess.STDOUT
            )
        wait_until(lambda: http.get(f"{self.url}/system").status_code == 200, 30, "Orthanc up", [self.log])

    def stop(self) -> None:
        stop(self.process)
        self.process = None

    def store_scu(self, path: Path) -> None:
        sent = subprocess.run(
            ["storescu", "-aec", "ORTHANC", "127.0.0.1", str(self.dicom_port), str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr

    def study_instances(self, http: httpx.Client, study_uid: str) -> list[dict]:
        return http.post(
            f"{self.url}/tools/find",
            json={"Level": "Instance", "Expand": True, "Query": {"StudyInstanceUID": study_uid}},
        ).json()


class NormGate:
    """``python -m service`` as a subprocess with the given NORMGATE_* settings; ``kill`` is a kill -9."""

    def __init__(self, root: Path, settings: dict[str, str], name: str = "normgate") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / f"{name}.log"
        self.env = {
            **os.environ,
            "NORMGATE_HOST": "127.0.0.1",
            "NORMGATE_PORT": str(self.port),
            "NORMGATE_DEVICE": "cpu",
            "NORMGATE_API_KEYS": "",
            "OMP_NUM_THREADS": "1",
            **settings,
        }
        self.process: subprocess.Popen | None = None

    def start(self, http: httpx.Client, timeout_s: float = 120) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service"], cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        wait_until(lambda: http.get(f"{self.url}/readyz").status_code == 200, timeout_s, "NormGate ready", [self.log])

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        stop(self.process)
        self.process = None

    def metric(self, http: httpx.Client, sample: str) -> float:
        """The value of one exposition line's sample, e.g. 'normgate_dicomweb_push_total{channel="dicomweb",…}'."""
        for line in http.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no sample {sample} on /metrics")
