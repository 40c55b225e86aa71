"""Shared helpers for the deploy/ checks: repository paths, validator binaries, and one live NormGate server.

The live server is the real thing (``python -m service`` in a subprocess, loopback only) with a tiny resnet18
checkpoint written by the fixture, so that ``promtool check metrics``, the Prometheus scrape test and the
dashboard/HPA metric cross-checks all look at the /metrics text the product actually serves.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VENV_BIN = Path(sys.executable).parent

# The core metric families every consumer (rules, dashboard, HPA) may rely on: the first eight of
# docs/api.md, "Health, readiness, metrics".
CORE_METRICS = {
    "normgate_request_duration_seconds": "histogram",
    "normgate_queue_wait_seconds": "histogram",
    "normgate_compute_duration_seconds": "histogram",
    "normgate_batch_size": "histogram",
    "normgate_queue_depth": "gauge",
    "normgate_rejected_total": "counter",
    "normgate_decisions_total": "counter",
    "normgate_model_info": "gauge",
}


# Every NORMGATE_* setting there is (service/config.py, README "Configuration"): the deploy files may set these
# and no others (a typo would be ignored by the service without a word).
def _settings() -> set[str]:
    from service.config import Settings

    return {"NORMGATE_" + name.upper() for name in Settings.model_fields}


SETTINGS = _settings()


def require_binary(name: str) -> str:
    """Path of a validator binary (venv first, then PATH).

    Missing locally: skip with the install hint. Missing under CI=true: fail, because .ci/run installs every
    validator (Debian packages from .ci/apt-packages.txt, PyPI ones from pyproject.toml) and a skipped
    validator would pass a broken artefact silently.
    """
    for candidate in (VENV_BIN / name,):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    message = (
        f"{name} not found: install it (`apt-get install prometheus` for promtool/prometheus, "
        f"`make install` for the PyPI validators)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)


def run_tool(
    args: list[str], *, input_text: str | None = None, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(args, input=input_text, capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(
    url: str, *, timeout_s: float, proc: subprocess.Popen | None = None, expect_status: int = 200
) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code == expect_status:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer {expect_status} within {timeout_s:.0f} s (last: {last})")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def metric_families(metrics_text: str) -> dict[str, str]:
    """{family name: type} from the ``# TYPE`` lines of a Prometheus text exposition."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", metrics_text, flags=re.MULTILINE))


def png_bytes(height: int = 80, width: int = 96, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = (rng.random((height, width)) * 255).astype(np.uint8)
    pixels[20:30, 40:50] = 255  # a bright square, like a foreign object
    buf = BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class LiveApp:
    base_url: str
    log_path: Path

    def assess(self, **params: str) -> httpx.Response:
        return httpx.post(
            f"{self.base_url}/assess",
            params=params,
            content=png_bytes(),
            headers={"Content-Type": "image/png"},
            timeout=60.0,
        )

    def metrics_text(self) -> str:
        r = httpx.get(f"{self.base_url}/metrics", timeout=10.0)
        r.raise_for_status()
        return r.text


@pytest.fixture(scope="session")
def live_app(tmp_path_factory: pytest.TempPathFactory):
    """A real NormGate server on a free loopback port, with some traffic already served."""
    import torch

    from models.architectures import build_model
    from models.checkpoint import save_checkpoint
    from models.metadata import ModelMetadata

    root = tmp_path_factory.mktemp("deploy_live_app")
    models_dir = root / "models"
    torch.manual_seed(0)
    save_checkpoint(
        build_model("resnet18"),
        ModelMetadata(name="default", version="test", arch="resnet18", input_size=[64, 64]),
        models_dir / "default",
    )
    port = free_loopback_port()
    env = dict(
        os.environ,
        NORMGATE_HOST="127.0.0.1",
        NORMGATE_PORT=str(port),
        NORMGATE_MODELS_DIR=str(models_dir),
        NORMGATE_DEVICE="cpu",
        NORMGATE_DATA_DIR=str(root / "data"),
        NORMGATE_API_KEYS="",
        OMP_NUM_THREADS="1",
    )
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    app = LiveApp(base_url=f"http://127.0.0.1:{port}", log_path=log_path)
    try:
        try:
            wait_for_http(f"{app.base_url}/readyz", timeout_s=120, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(
                f"NormGate did not become ready: {exc}\n--- server log ---\n"
                f"{log_path.read_text(errors='replace')[-4000:]}"
            )
        # Traffic so every core family has samples: a full assessment, a forward-only one, a bad image.
        assert app.assess().status_code == 200, app.log_path.read_text(errors="replace")[-2000:]
        assert app.assess(heatmap="none").status_code == 200
        bad = httpx.post(
            f"{app.base_url}/assess", content=b"not an image", headers={"Content-Type": "image/png"}, timeout=30.0
        )
        assert bad.status_code == 400, bad.text
        httpx.get(f"{app.base_url}/healthz", timeout=10.0).raise_for_status()
        yield app
    finally:
        stop_process(proc)
