"""Train a tiny model with the training command line, serve what it wrote, assess an image with it.

The checkpoint goes from ``python -m models.train`` to the server untouched: what training writes must be what
the server loads, lists in GET /models and answers with.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import torch

from models.checkpoint import load_checkpoint
from models.datasets import load_gray, read_split
from models.imaging import preprocess_batch
from service.app import create_app
from tests.helpers import REPO, running_app, settings_for
from tests.models.tiny_cxr import write_tiny_dataset


def test_a_checkpoint_trained_by_the_cli_is_served_and_answers_like_the_checkpoint(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", {"train": 8, "dev": 4, "test": 4})
    models_dir = tmp_path / "models"
    command = [
        sys.executable,
        "-m",
        "models.train",
        "--data",
        str(data),
        "--out",
        str(models_dir / "default"),
        "--input-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--workers",
        "1",
        "--name",
        "default",
        "--version",
        "tiny-1",
        "--clean-state",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    sample = read_split(data, "test")[1]
    checkpoint = load_checkpoint(models_dir / "default")
    x = preprocess_batch(
        [load_gray(sample.image_path)], checkpoint.meta.input_size, checkpoint.meta.mean, checkpoint.meta.std
    )
    with torch.no_grad():
        expected = torch.softmax(checkpoint.model(x), dim=1)[0, checkpoint.meta.positive_index].item()

    async def scenario() -> tuple[dict, dict]:
        async with running_app(create_app(settings_for(models_dir))) as client:
            models = (await client.get("/models")).json()
            answer = await client.post(
                "/assess", content=sample.image_path.read_bytes(), headers={"content-type": "image/png"}
            )
            assert answer.status_code == 200, answer.text
            return models, answer.json()

    models, answer = asyncio.run(scenario())
    [info] = models["models"]
    assert info["version"] == "tiny-1" and info["trained_on"]["epochs"] == 1
    assert [d["split"] for d in info["trained_on"]["data"]] == ["train", "dev", "test"]
    assert answer["model"] == {"name": "default", "version": "tiny-1", "arch": "resnet18"}
    assert abs(answer["probability"] - expected) < 1e-5
