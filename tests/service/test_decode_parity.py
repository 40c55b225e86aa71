"""One decode path: the same DICOM (Rescale Slope/Intercept, a VOI window, MONOCHROME1) and the same PNG give the
same model input tensor and the same probability through the training data loader, the evaluation engine and
/assess (docs/formats.md; models/imaging).

Before the decode module was shared, training read DICOM with pydicom's raw pixel array (no Modality or VOI LUT)
while /assess applied them: the same file became two different tensors.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from models.checkpoint import load_checkpoint
from models.datasets import read_split
from models.evaluation import EvaluatedModel, decode_batch, positive_probabilities
from models.imaging import normalise
from models.train import build_cache, predict
from service.app import create_app
from tests.helpers import make_checkpoint, running_app, settings_for

GRID = [64, 64]


def _attenuation(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    rows = np.linspace(-1, 1, height)[:, None]
    cols = np.linspace(-1, 1, width)[None, :]
    values = 1200 + 1500 * np.exp(-(rows**2 + cols**2) * 2) + rng.normal(0, 60, (height, width))
    values[30:38, 40:50] = 3900  # a dense object
    return values.clip(0, 4095).astype(np.uint16)


def _dicom_with_luts(attenuation: np.ndarray) -> bytes:
    """MONOCHROME1 (stored = 4095 - value), Rescale Slope 0.5 / Intercept -100, a window narrower than the data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined = "DX", "CHEST"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.Rows, ds.Columns = attenuation.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-100"
    ds.WindowCenter, ds.WindowWidth = "700", "1400"
    ds.PixelData = np.ascontiguousarray(4095 - attenuation).astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, Path, dict[str, bytes]]:
    base = tmp_path_factory.mktemp("parity")
    attenuation = _attenuation(96, 80)
    png = io.BytesIO()
    Image.fromarray((attenuation // 16).astype(np.uint8)).save(png, format="PNG")
    bodies = {"dicom": _dicom_with_luts(attenuation), "png": png.getvalue()}
    data = base / "data"
    (data / "test").mkdir(parents=True)
    (data / "test" / "chest.dcm").write_bytes(bodies["dicom"])
    (data / "test" / "chest.png").write_bytes(bodies["png"])
    # Positive with a box, so the same file set works for the Pointing Game path as well.
    (data / "test.csv").write_text("image_name,annotation\nchest.dcm,0 40 30 49 37\nchest.png,0 40 30 49 37\n")
    models_dir = base / "models"
    make_checkpoint(models_dir / "default", seed=3, input_size=GRID)
    return data, models_dir, bodies


def _assess_inputs(models_dir: Path, bodies: dict[str, bytes]) -> dict[str, tuple[torch.Tensor, float]]:
    """The tensor /assess hands the model (seen by the worker's batch hook) and the probability it answers."""
    seen: list[torch.Tensor] = []
    app = create_app(
        settings_for(models_dir, max_batch_size=1),
        batch_hook=lambda _name, batch: seen.extend(p.payload.image.clone() for p in batch),
    )
    media = {"dicom": "application/dicom", "png": "image/png"}

    async def scenario() -> dict[str, tuple[torch.Tensor, float]]:
        out = {}
        async with running_app(app) as client:
            for kind, body in bodies.items():
                seen.clear()
                response = await client.post("/assess", content=body, headers={"content-type": media[kind]})
                assert response.status_code == 200, response.text
                out[kind] = (seen[-1], response.json()["probability"])
        return out

    return asyncio.run(scenario())


def test_training_evaluation_and_assess_see_the_same_tensor_and_probability(workspace):
    data, models_dir, bodies = workspace
    checkpoint = load_checkpoint(models_dir / "default")
    meta = checkpoint.meta
    samples = read_split(data, "test")
    assert [s.image_path.name for s in samples] == ["chest.dcm", "chest.png"]

    # The training data loader: decode + resize into the cache, normalise as a training batch is.
    cache = build_cache(samples, meta.input_size, workers=1)
    training = normalise(cache, meta.mean, meta.std)
    training_probs = predict(checkpoint.model, cache, meta.mean, meta.std, meta.positive_index)
    # The evaluation engine.
    evaluation = decode_batch(samples).tensor_for(meta)
    evaluation_probs = positive_probabilities(EvaluatedModel("default", checkpoint.model, meta), evaluation)
    # /assess.
    served = _assess_inputs(models_dir, bodies)

    for index, kind in enumerate(("dicom", "png")):
        assess_tensor, assess_prob = served[kind]
        assert assess_tensor.shape == (3, *GRID)
        assert (training[index] - assess_tensor).abs().max() <= 1e-6, kind
        assert (evaluation[index] - assess_tensor).abs().max() <= 1e-6, kind
        assert training_probs[index] == pytest.approx(assess_prob, abs=1e-6)
        assert float(evaluation_probs[index]) == pytest.approx(assess_prob, abs=1e-6)

    # The LUTs really were applied: the DICOM's tensor differs from a plain min–max of its stored values.
    stored = (4095 - _attenuation(96, 80)).astype(np.float32)
    naive = torch.from_numpy((stored - stored.min()) / (stored.max() - stored.min()))
    naive_grid = torch.nn.functional.interpolate(naive[None, None], size=GRID, mode="bilinear", antialias=True)[0, 0]
    naive_input = normalise(naive_grid[None], meta.mean, meta.std)[0]
    assert (naive_input - served["dicom"][0]).abs().max() > 0.5
