"""Write a synthetic LVOT data set in the Object-CXR layout, one row per frame, split by patient.

``OUT/<split>.csv`` (header ``image_name,annotation``): one row per frame, ``image_name`` such as
``train/p00012_f07.png``; ``annotation`` empty for a frame without the outflow tract, else ``0 x1 y1 x2 y2``
(a rectangle around the visible tract, original pixels). ``models.datasets.read_split`` reads it unchanged.

``OUT/<split>_frames.csv``: ``image_name, patient_id, frame_index, n_frames, trigger_time_ms, label`` — which
patient and cardiac phase each frame is, for patient-wise checks and series-level aggregation.
``OUT/<split>_patients.csv``: one row per patient (label, frame counts, heart rate, matrix, spacing, slice
thickness, SNR, field strength, long-axis angle, series description).
``OUT/synth.json``: the parameters and per-split counts.
With ``dicom_splits``, ``OUT/dicom/<split>/<patient_id>/`` holds the same frames as DICOM
(:mod:`models.synth.cmr.dicom`). Same parameters → byte-identical files, whatever the number of workers.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from models.synth.cmr.patient import FRAMES_MAX, FRAMES_MIN, Patient, sample_patient
from models.synth.cmr.render import MAX_VALUE, CineRenderer, Frame

SPLITS = ("train", "dev", "test")
FORMATS = {"png16": 16, "png": 8}
FRAME_COLUMNS = ("image_name", "patient_id", "frame_index", "n_frames", "trigger_time_ms", "label")
PATIENT_COLUMNS = (
    "patient_id",
    "label",
    "n_frames",
    "positive_frames",
    "heart_rate_bpm",
    "rows",
    "cols",
    "pixel_spacing_mm",
    "slice_thickness_mm",
    "snr",
    "field_strength_t",
    "axis_deg",
    "series_description",
)


def png_values(pixels: npt.NDArray[np.uint16], fmt: str) -> npt.NDArray[np.uint16] | npt.NDArray[np.uint8]:
    """12-bit stored values → the PNG's full-range 16-bit or 8-bit values (rounded linear scaling)."""
    if fmt == "png16":
        wide: npt.NDArray[np.uint16] = np.round(pixels.astype(np.float64) * (65535.0 / MAX_VALUE)).astype(np.uint16)
        return wide
    if fmt == "png":
        narrow: npt.NDArray[np.uint8] = np.round(pixels.astype(np.float64) * (255.0 / MAX_VALUE)).astype(np.uint8)
        return narrow
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def encode_png(pixels: npt.NDArray[np.uint16], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(png_values(pixels, fmt)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def image_name(split: str, index: int, frame: int) -> str:
    return f"{split}/p{index:05d}_f{frame:02d}.png"


def annotation_field(frame: Frame) -> str:
    if frame.box is None:
        return ""
    x1, y1, x2, y2 = frame.box
    return f"0 {x1} {y1} {x2} {y2}"


@dataclass(frozen=True)
class _Job:
    out: str
    split: str
    index: int
    seed: int
    fmt: str
    frames_min: int
    frames_max: int
    dicom: bool


@dataclass(frozen=True)
class _Result:
    split: str
    frame_rows: list[tuple[str, str, int, int, str, int, str]]  # + annotation last
    patient_row: tuple[Any, ...]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # never leave a half-written file behind an interrupted run


def _run_job(job: _Job) -> _Result:
    patient = sample_patient(job.seed, job.split, job.index, job.frames_min, job.frames_max)
    frames = CineRenderer(patient).frames()
    out = Path(job.out)
    rows = []
    for f in frames:
        name = image_name(job.split, job.index, f.frame_index)
        _atomic_write(out / name, encode_png(f.pixels, job.fmt))
        rows.append(
            (
                name,
                patient.patient_id,
                f.frame_index,
                patient.n_frames,
                f"{f.trigger_time_ms:.1f}",
                f.label,
                annotation_field(f),
            )
        )
    if job.dicom:
        from models.synth.cmr.dicom import write_patient_dicom

        write_patient_dicom(patient, frames, out / "dicom" / job.split / patient.patient_id)
    return _Result(job.split, rows, patient_row(patient, frames))


def patient_row(patient: Patient, frames: Sequence[Frame]) -> tuple[Any, ...]:
    acq = patient.acquisition
    return (
        patient.patient_id,
        int(patient.positive),
        patient.n_frames,
        sum(f.label for f in frames),
        f"{patient.cycle.heart_rate_bpm:.1f}",
        acq.rows,
        acq.cols,
        f"{acq.pixel_spacing_mm:.4f}",
        f"{acq.slice_thickness_mm:.2f}",
        f"{acq.snr:.1f}",
        acq.field_strength_t,
        f"{patient.heart.axis_deg:.1f}",
        acq.series_description,
    )


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def generate(
    out: str | Path,
    patients_train: int,
    patients_dev: int,
    patients_test: int,
    seed: int = 0,
    frames_min: int = FRAMES_MIN,
    frames_max: int = FRAMES_MAX,
    fmt: str = "png16",
    dicom_splits: Sequence[str] = (),
    workers: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the data set; returns the summary also saved as ``OUT/synth.json``."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not 2 <= frames_min <= frames_max:
        raise ValueError(f"need 2 <= --frames-min <= --frames-max, got {frames_min} and {frames_max}")
    counts = {"train": patients_train, "dev": patients_dev, "test": patients_test}
    for split, n in counts.items():
        if n < 0:
            raise ValueError(f"--patients-{split} must be >= 0, got {n}")
    unknown = sorted(set(dicom_splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"DICOM splits must be among {', '.join(SPLITS)}, got {', '.join(unknown)}")
    out = Path(out)
    jobs: list[_Job] = []
    for split, n in counts.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        jobs += [_Job(str(out), split, i, seed, fmt, frames_min, frames_max, split in dicom_splits) for i in range(n)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="patient", desc="cmr synth")
    results: list[_Result] = []
    if workers > 1 and len(jobs) > 1:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ctx.Pool(workers) as pool:
            for res in pool.imap(_run_job, jobs, chunksize=1):
                results.append(res)
                if bar:
                    bar.update()
    else:
        for job in jobs:
            results.append(_run_job(job))
            if bar:
                bar.update()
    if bar:
        bar.close()
    summary: dict[str, Any] = {
        "generator": "models.synth.cmr",
        "seed": seed,
        "frames_min": frames_min,
        "frames_max": frames_max,
        "format": fmt,
        "dicom_splits": sorted(dicom_splits),
        "splits": {},
    }
    for split in SPLITS:
        mine = [r for r in results if r.split == split]
        frame_rows = [row for r in mine for row in r.frame_rows]
        _write_csv(out / f"{split}.csv", ("image_name", "annotation"), [(row[0], row[6]) for row in frame_rows])
        _write_csv(out / f"{split}_frames.csv", FRAME_COLUMNS, [row[:6] for row in frame_rows])
        _write_csv(out / f"{split}_patients.csv", PATIENT_COLUMNS, [r.patient_row for r in mine])
        summary["splits"][split] = {
            "patients": len(mine),
            "positive_patients": sum(int(r.patient_row[1]) for r in mine),
            "frames": len(frame_rows),
            "positive_frames": sum(int(row[5]) for row in frame_rows),
        }
    (out / "synth.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
