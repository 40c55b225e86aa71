"""The whole site loop on a tiny checkpoint: the gate answers, radiographers give verdicts, the audit is exported
as CSV, ``python -m models.calibrate --labels`` fits on it and writes the block, and the restarted service answers
with the calibrated probability, the new threshold and the calibration's version."""

from __future__ import annotations

import asyncio
import math

import pytest

from models import calibrate
from models.checkpoint import read_metadata
from service.app import create_app
from tests.helpers import make_checkpoint, png_bytes, radiograph, running_app, settings_for

PNG = {"content-type": "image/png"}


def test_verdicts_exported_calibrated_and_served(tmp_path):
    models_dir = tmp_path / "models"
    make_checkpoint(models_dir / "default", seed=7)
    url = f"sqlite:///{tmp_path / 'normgate.sqlite3'}"
    images = [png_bytes(radiograph(64 + i, 60, seed=i, spot=(25, 20 + i) if i % 3 == 0 else None)) for i in range(18)]

    async def first_run() -> tuple[list[dict], str]:
        async with running_app(create_app(settings_for(models_dir, database_url=url))) as client:
            answers = [
                (await client.post("/assess", content=body, headers=PNG, params={"heatmap": "none"})).json()
                for body in images
            ]
            for i, answer in enumerate(answers):
                # The "truth" of the site: every third image has an object; the verdict says where the gate erred.
                truth = i % 3 == 0
                said = answer["decision"] == "reacquire"
                verdict = "agree" if truth == said else ("reacquired_anyway" if truth else "accepted_anyway")
                posted = await client.post(f"/assessments/{answer['assessment_id']}/verdict", json={"verdict": verdict})
                assert posted.status_code == 201
            export = await client.get("/audit", headers={"accept": "text/csv"})
            return answers, export.text

    answers, export = asyncio.run(first_run())
    (tmp_path / "audit.csv").write_text(export)
    assert (
        calibrate.main(
            [
                "--model",
                str(models_dir / "default"),
                "--labels",
                str(tmp_path / "audit.csv"),
                "--version",
                "site-2026-12",
                "--bootstrap",
                "20",
                "--report",
                str(tmp_path / "report.html"),
            ]
        )
        == 0
    )
    block = read_metadata(models_dir / "default").calibration
    assert block.version == "site-2026-12" and block.metrics["fitted"]["n"] == 18
    assert block.fitted_on.startswith("verdict export audit.csv (18 cases, 6 positive)")

    async def second_run() -> list[dict]:
        async with running_app(create_app(settings_for(models_dir, database_url=url))) as client:
            return [
                (await client.post("/assess", content=body, headers=PNG, params={"heatmap": "none"})).json()
                for body in images[:4]
            ]

    for before, after in zip(answers, asyncio.run(second_run())):
        assert after["calibration"] == "site-2026-12" and after["threshold"] == block.threshold
        # σ(m) before, σ(m / T) after: the same margin m, divided by the fitted temperature.
        margin = math.log(before["probability"] / (1 - before["probability"]))
        assert after["probability"] == pytest.approx(1 / (1 + math.exp(-margin / block.temperature)), abs=1e-5)
        assert after["decision"] == ("reacquire" if after["probability"] >= block.threshold else "accept")
