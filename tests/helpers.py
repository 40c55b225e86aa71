"""Helpers shared by the test suite: image bytes, tiny checkpoints, settings, a running app, readiness waits.

Fixtures live in the conftest.py files; plain functions and classes live here so tests import them by name.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import io
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from models.architectures import build_model
from models.checkpoint import save_checkpoint
from models.metadata import ModelMetadata, Serves, TrainingRecord

REPO = Path(__file__).resolve().parents[1]

GRID = [64, 64]
# The shipped chest model's routing (models/checkpoints/default/model.json): test checkpoints stand in for it.
CHEST_SERVES = {"modality": "CR|DX|DR", "body_part_examined": "CHEST"}
# The shipped cardiac model's routing (models/checkpoints/cmr-lvot/model.json; tests/service/test_shipped.py
# checks they are the same): MR 4-chamber series.
LVOT_SERVES = {
    "modality": "MR",
    "body_part_examined": "HEART|CARDIAC|CHEST|THORAX",
    "series_description": r".*(?<![0-9])(4[ _-]?ch(amber)?s?|4[ _-]?c|four[ _-]?chamber|(?<![a-z])hla)(?![a-z]).*",
}
# NORMGATE_MIN_IMAGE_SIDE for tests: their images are tiny (the default, 128, would call them too_small).
TEST_MIN_IMAGE_SIDE = 16


def make_checkpoint(
    folder: Path,
    seed: int = 0,
    input_size=GRID,
    threshold: float = 0.5,
    version: str = "test-1",
    serves: dict | None = CHEST_SERVES,
) -> Path:
    """A random-weight ResNet-18 checkpoint; ``serves`` routes CR/DX/DR chest DICOM to it (None: PNG/JPEG and
    ``?model=`` only)."""
    torch.manual_seed(seed)
    model = build_model("resnet18")
    meta = ModelMetadata(
        name=folder.name,
        version=version,
        arch="resnet18",
        input_size=list(input_size),
        threshold=threshold,
        trained_on=TrainingRecord(notes="nothing (random weights, tests only)"),
        serves=Serves(**serves) if serves is not None else None,
    )
    return save_checkpoint(model, meta, folder)


_STATE_ROOT: list[Path] = []


def _state_root() -> Path:
    """One temporary folder per test process for the apps' state folders, removed when the process ends."""
    if not _STATE_ROOT:
        _STATE_ROOT.append(Path(tempfile.mkdtemp(prefix="normgate-state-")))
        atexit.register(shutil.rmtree, _STATE_ROOT[0], True)
    return _STATE_ROOT[0]


def settings_for(models_dir: Path, **overrides):
    from service.config import Settings

    values = {
        "models_dir": models_dir,
        "default_model": "default",
        "device": "cpu",
        "max_batch_size": 8,
        "max_batch_wait_ms": 2,
        "max_queue_size": 64,
        "request_timeout_ms": 30_000,
        "decode_workers": 2,
        "api_keys": [],
        "min_image_side": TEST_MIN_IMAGE_SIDE,
        # Each app its own store (SQLite in a fresh folder), never the checkout's state/.
        "state_dir": Path(tempfile.mkdtemp(dir=_state_root())),
    }
    values.update(overrides)
    return Settings(**values)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def radiograph(height: int, width: int, seed: int = 0, spot: tuple[int, int] | None = None) -> np.ndarray:
    """A smooth 8-bit test image; ``spot`` = (row, col) of a small bright square (a 'foreign object')."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, height)[:, None]
    cols = np.linspace(0, 1, width)[None, :]
    image = 60 + 80 * rows * (1 - rows) * 4 * cols + rng.normal(0, 6, (height, width))
    if spot is not None:
        r, c = spot
        image[max(r - 4, 0) : r + 4, max(c - 4, 0) : c + 4] = 255
    return image.clip(0, 255).astype(np.uint8)


def wait_ready_sync(client, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"service not ready after {timeout_s} s: {client.get('/readyz').json()}")


async def wait_ready(client: httpx.AsyncClient, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (await client.get("/readyz")).status_code == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"service not ready after {timeout_s} s: {(await client.get('/readyz')).json()}")


class running_app:
    """``async with running_app(app) as client``: lifespan started, models ready, httpx client on ASGI."""

    def __init__(self, app, ready: bool = True) -> None:
        self.app = app
        self.ready = ready

    async def __aenter__(self) -> httpx.AsyncClient:
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://normgate")
        if self.ready:
            await wait_ready(self._client)
        return self._client

    async def __aexit__(self, *exc) -> None:
        await self._client.aclose()
        await self._lifespan.__aexit__(*exc)


def dicom_bytes(array: np.ndarray, frames: int = 1, photometric: str = "MONOCHROME2") -> bytes:
    """A minimal uncompressed CR image (Part 10 file) holding ``array`` (uint8 or uint16) ``frames`` times."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = array.shape
    bits = 8 if array.dtype == np.uint8 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    data = np.ascontiguousarray(np.stack([array] * frames) if frames > 1 else array)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = data.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def heatmap_array(answer: dict) -> np.ndarray:
    """The 8-bit heatmap of an /assess answer, checked to be a single-channel PNG."""
    image = Image.open(io.BytesIO(base64.b64decode(answer["heatmap"]["png_base64"])))
    assert image.format == "PNG" and image.mode == "L"
    return np.asarray(image)
