"""The synthetic 4-chamber cine generator: determinism, labels and boxes, layout, cardiac timing, geometry."""

from __future__ import annotations

import csv
import hashlib
import itertools
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from models.datasets import RECTANGLE, load_gray, read_split
from models.synth.cmr.__main__ import main
from models.synth.cmr.cycle import CardiacCycle
from models.synth.cmr.lvot import MIN_VISIBLE_AREA_MM2, slab_fraction
from models.synth.cmr.patient import FRAMES_MAX, FRAMES_MIN, is_positive, sample_patient
from models.synth.cmr.render import MAX_VALUE, CineRenderer
from models.synth.cmr.shapes import ellipse_sdf

SEED = 5
COUNTS = {"train": 2, "dev": 1, "test": 2}


def _digests(root: Path, pattern: str) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.glob(pattern))
        if p.is_file()
    }


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cmr")
    argv = ["--out", str(out), "--seed", str(SEED), "--frames-min", "20", "--frames-max", "22", "--dicom", "--quiet"]
    for split, n in COUNTS.items():
        argv += [f"--patients-{split}", str(n)]
    assert main(argv) == 0
    return out


def test_same_seed_same_bytes_any_workers(dataset: Path, tmp_path: Path):
    again = tmp_path / "again"
    argv = ["--out", str(again), "--seed", str(SEED), "--frames-min", "20", "--frames-max", "22", "--quiet"]
    argv += ["--patients-train", "0", "--patients-dev", "0", "--patients-test", "2", "--dicom", "--workers", "2"]
    assert main(argv) == 0
    # patient i of a split is the same whatever the other splits hold; DICOM UIDs are derived, not random
    for pattern in ("test/*.png", "test*.csv", "dicom/test/*/enhanced.dcm", "dicom/test/*/series/*.dcm"):
        assert _digests(dataset, pattern) == _digests(again, pattern) != {}, pattern


def test_other_seed_other_patient():
    a, b = sample_patient(SEED, "test", 0), sample_patient(SEED + 1, "test", 0)
    assert a.heart != b.heart and a.acquisition != b.acquisition
    assert sample_patient(SEED, "test", 0) == a


def test_csv_read_by_read_split_and_matches_side_files(dataset: Path):
    for split, n in COUNTS.items():
        samples = read_split(dataset, split)
        frames = _rows(dataset / f"{split}_frames.csv")
        patients = _rows(dataset / f"{split}_patients.csv")
        assert len(patients) == n and len(samples) == len(frames) == sum(int(p["n_frames"]) for p in patients)
        shape = {p["patient_id"]: (int(p["rows"]), int(p["cols"])) for p in patients}
        for sample, row in zip(samples, frames):
            assert sample.image_path.name == Path(row["image_name"]).name
            assert sample.label == int(row["label"]) == (1 if sample.annotations else 0)
            img = load_gray(sample.image_path)
            assert img.dtype == np.float32 and img.shape == shape[row["patient_id"]]
            h, w = img.shape
            for a in sample.annotations:
                assert a.kind == RECTANGLE
                x1, y1, x2, y2 = a.box
                assert 0 <= x1 < x2 <= w - 1 and 0 <= y1 < y2 <= h - 1


def test_patient_wise_splits_and_frame_bookkeeping(dataset: Path):
    ids: dict[str, set[str]] = {}
    for split in COUNTS:
        frames = _rows(dataset / f"{split}_frames.csv")
        ids[split] = {r["patient_id"] for r in frames}
        for pid in ids[split]:
            mine = [r for r in frames if r["patient_id"] == pid]
            n = int(mine[0]["n_frames"])
            assert 20 <= n <= 22 and [int(r["frame_index"]) for r in mine] == list(range(n))
            times = [float(r["trigger_time_ms"]) for r in mine]
            assert all(b > a for a, b in itertools.pairwise(times))
            p = sample_patient(SEED, split, int(mine[0]["image_name"].split("/p")[1][:5]), 20, 22)
            assert p.patient_id == pid and times[-1] < p.cycle.rr_ms + 15.0
            assert times == pytest.approx([p.trigger_time_ms(k) for k in range(n)], abs=0.05)
    assert not ids["train"] & ids["dev"] and not ids["train"] & ids["test"] and not ids["dev"] & ids["test"]


def test_positive_patients_have_positive_and_negative_frames(dataset: Path):
    for split in COUNTS:
        frames = _rows(dataset / f"{split}_frames.csv")
        for p in _rows(dataset / f"{split}_patients.csv"):
            labels = [int(r["label"]) for r in frames if r["patient_id"] == p["patient_id"]]
            assert sum(labels) == int(p["positive_frames"])
            if p["label"] == "1":
                assert 0 < sum(labels) < len(labels)
            else:
                assert sum(labels) == 0
    for split in ("train", "test"):  # pairs 0, 1: exactly one positive
        assert sorted(int(p["label"]) for p in _rows(dataset / f"{split}_patients.csv")) == [0, 1]


def test_labels_balanced_in_pairs_and_frame_counts_in_range():
    labels = [is_positive(3, "train", i) for i in range(60)]
    assert all(labels[i] != labels[i + 1] for i in range(0, 60, 2))
    for i in range(12):
        p = sample_patient(3, "train", i)
        assert FRAMES_MIN <= p.n_frames <= FRAMES_MAX == 30 and FRAMES_MIN == 20
        assert p.positive == labels[i] == any(v.positive for v in p.visibilities)
    assert {sample_patient(3, "dev", i, 24, 24).n_frames for i in range(4)} == {24}


def _box_mask(shape: tuple[int, int], box: tuple[int, int, int, int], grow: int = 0) -> np.ndarray:
    x1, y1, x2, y2 = box
    mask = np.zeros(shape, dtype=bool)
    mask[max(y1 - grow, 0) : y2 + grow + 1, max(x1 - grow, 0) : x2 + grow + 1] = True
    return mask


def test_boxes_surround_the_rendered_outflow_tract():
    """Render a positive patient with and without its tract (same anatomy, same noise): the change is where the
    boxes are, and the frames without a box are the ones where the tract does not show."""
    patient = next(p for p in (sample_patient(SEED, "train", i) for i in range(4)) if p.positive)
    renderer = CineRenderer(patient)
    spacing = patient.acquisition.pixel_spacing_mm
    for k in range(patient.n_frames):
        with_tract, without = renderer.frame(k), renderer.frame(k, with_tract=False)
        change = np.abs(with_tract.unit.astype(np.float64) - without.unit.astype(np.float64))
        vis = patient.visibilities[k]
        assert with_tract.label == int(vis.positive) and with_tract.box == vis.box
        if with_tract.box is None:
            assert vis.area_mm2 < MIN_VISIBLE_AREA_MM2
            continue
        inside = _box_mask(change.shape, with_tract.box)
        assert inside[np.unravel_index(np.argmax(change), change.shape)]
        assert change.max() > 0.15  # a visible channel, not a shade
        assert change[inside].sum() >= 0.8 * change.sum()
        assert change[_box_mask(change.shape, with_tract.box, grow=2)].sum() >= 0.95 * change.sum()
        x1, y1, x2, y2 = with_tract.box
        assert (x2 - x1 + 1) * (y2 - y1 + 1) * spacing**2 >= vis.area_mm2 >= MIN_VISIBLE_AREA_MM2


def test_frames_move_with_the_cycle():
    p = sample_patient(SEED, "dev", 0)
    r = CineRenderer(p)
    es = max(range(p.n_frames), key=lambda k: p.cycle.contraction(p.trigger_time_ms(k)))
    ed, systole = r.signal(0, with_tract=False), r.signal(es, with_tract=False)
    assert not np.allclose(ed, systole)
    assert np.array_equal(r.frame(3).pixels, CineRenderer(p).frame(3).pixels)
    assert r.frame(3).pixels.max() <= MAX_VALUE


def test_cardiac_cycle_phases():
    cycle = CardiacCycle(60.0, 320.0, 40.0, 80.0, 160.0, 130.0, 0.2)
    assert cycle.rr_ms == 1000.0
    assert cycle.contraction(0.0) == 0.0 and cycle.contraction(320.0) == pytest.approx(1.0)
    assert cycle.contraction(380.0) == 1.0  # isovolumic relaxation
    assert cycle.contraction(560.0) == pytest.approx(0.2)  # end of rapid filling
    assert cycle.contraction(999.999) == pytest.approx(0.0, abs=1e-5)
    assert cycle.aortic_opening(20.0) == 0.0 < cycle.aortic_opening(180.0) and cycle.aortic_opening(500.0) == 0.0
    assert cycle.atrioventricular_opening(200.0) == 0.0 < cycle.atrioventricular_opening(500.0)
    assert cycle.atrial_kick(500.0) == 0.0 < cycle.atrial_kick(935.0)
    fast = CardiacCycle(110.0, 320.0, 40.0, 80.0, 160.0, 130.0, 0.2)  # no room for diastasis: phases squeezed
    assert fast.contraction(fast.rr_ms - 1e-3) == pytest.approx(0.0, abs=1e-4)


def test_slab_fraction_matches_numerical_integration():
    """Share of a slab of thickness T inside a sphere of radius r whose centre is z deep and w across."""
    t = np.linspace(-3.5, 3.5, 70001)  # slab of thickness 7 mm
    for w, z, r in ((0.0, 0.0, 10.0), (4.0, 8.0, 10.0), (9.0, 1.0, 10.0), (2.0, 12.0, 10.0), (0.0, 0.0, 2.0)):
        inside = (w * w + (t - z) ** 2) <= r * r
        expected = inside.mean()
        got = float(slab_fraction(np.array(w), np.array(z), np.array(r), 7.0))
        assert got == pytest.approx(expected, abs=2e-4), (w, z, r)


def test_ellipse_distance_on_the_axes():
    x = np.array([[0.0, 30.0, 35.0, 0.0, 0.0]])
    y = np.array([[0.0, 0.0, 0.0, 10.0, 14.0]])
    d = ellipse_sdf(x, y, 0.0, 0.0, 30.0, 10.0)
    assert d[0, 0] < 0 and d[0, 1] == pytest.approx(0.0, abs=1e-9) and d[0, 3] == pytest.approx(0.0, abs=1e-9)
    assert d[0, 2] == pytest.approx(5.0, rel=0.05) and d[0, 4] == pytest.approx(4.0, rel=0.05)
    rotated = ellipse_sdf(np.array([[0.0]]), np.array([[35.0]]), 0.0, 0.0, 30.0, 10.0, math.pi / 2)
    assert rotated[0, 0] == pytest.approx(5.0, rel=0.05)


def test_cli_rejects_bad_frame_range(tmp_path: Path, capsys):
    assert main(["--out", str(tmp_path), "--frames-min", "25", "--frames-max", "20", "--quiet"]) == 2
    assert "frames-min" in capsys.readouterr().err


def _dicom_folders(dataset: Path) -> list[Path]:
    folders = sorted((dataset / "dicom" / "test").iterdir())
    assert [f.name for f in folders] == sorted(p["patient_id"] for p in _rows(dataset / "test_patients.csv"))
    return folders


def test_dicom_decodes_to_the_png_pixels_and_carries_the_timing(dataset: Path):
    import pydicom

    frames = _rows(dataset / "test_frames.csv")
    patients = {p["patient_id"]: p for p in _rows(dataset / "test_patients.csv")}
    for folder in _dicom_folders(dataset):
        mine = [r for r in frames if r["patient_id"] == folder.name]
        # load_gray gives the 16-bit PNG values over 65535 as float32, which round back exactly
        pngs = np.round(np.stack([load_gray(dataset / r["image_name"]) for r in mine]).astype(np.float64) * 65535.0)
        times = [float(r["trigger_time_ms"]) for r in mine]
        info = patients[folder.name]
        enhanced = pydicom.dcmread(folder / "enhanced.dcm")
        assert enhanced.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4.1" and enhanced.Modality == "MR"
        assert enhanced.BodyPartExamined == "HEART" and enhanced.PhotometricInterpretation == "MONOCHROME2"
        assert enhanced.SeriesDescription == info["series_description"] and enhanced.BitsStored == 12
        assert int(enhanced.NumberOfFrames) == len(mine)
        stored = enhanced.pixel_array.astype(np.float64)
        assert stored.shape == (len(mine), int(info["rows"]), int(info["cols"])) and stored.max() <= 4095
        assert np.array_equal(np.round(stored * 65535.0 / 4095.0), np.round(pngs))  # 12-bit values scaled to 16 bits
        shared = enhanced.SharedFunctionalGroupsSequence[0]
        spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
        assert spacing == pytest.approx([float(info["pixel_spacing_mm"])] * 2, abs=1e-4)
        delays = [
            float(item.CardiacSynchronizationSequence[0].NominalCardiacTriggerDelayTime)
            for item in enhanced.PerFrameFunctionalGroupsSequence
        ]
        assert delays == pytest.approx(times, abs=0.051)
        positions = [
            item.FrameContentSequence[0].TemporalPositionIndex for item in enhanced.PerFrameFunctionalGroupsSequence
        ]
        assert positions == list(range(1, len(mine) + 1))
        series = [pydicom.dcmread(p) for p in sorted((folder / "series").glob("*.dcm"))]
        assert [ds.InstanceNumber for ds in series] == list(range(1, len(mine) + 1))
        assert [float(ds.TriggerTime) for ds in series] == pytest.approx(times, abs=0.051)
        assert {ds.CardiacNumberOfImages for ds in series} == {len(mine)}
        assert {ds.SOPClassUID for ds in series} == {"1.2.840.10008.5.1.4.1.1.4"}
        assert {ds.StudyInstanceUID for ds in series} == {enhanced.StudyInstanceUID}
        assert {ds.SeriesInstanceUID for ds in series} != {enhanced.SeriesInstanceUID}
        assert len({ds.SOPInstanceUID for ds in series} | {enhanced.SOPInstanceUID}) == len(mine) + 1
        for k, ds in enumerate(series):
            assert np.array_equal(ds.pixel_array, enhanced.pixel_array[k])
        # The project's own decoder gives a classic instance the same [0, 1] image as its PNG frame (the window
        # is the full 12-bit range): training on the PNG layout and serving the DICOM see the same input.
        assert np.abs(load_gray(folder / "series" / "IM_0001.dcm") - pngs[0] / 65535.0).max() < 1e-5


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_dicom_passes_dciodvfy(dataset: Path):
    folder = _dicom_folders(dataset)[0]
    for path in (folder / "enhanced.dcm", folder / "series" / "IM_0001.dcm"):
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        report = (result.stdout + result.stderr).splitlines()
        assert not [line for line in report if line.startswith("Error")], report


def test_centre_control_counts_boxes_near_the_grid_centre(dataset: Path):
    from models.synth.cmr.centre_control import centre_control, centred_gaussian

    assert np.unravel_index(np.argmax(centred_gaussian(33)), (33, 33)) == (16, 16)
    grid = 64
    samples = [s for split in COUNTS for s in read_split(dataset, split)]
    results = centre_control(samples, grid, [4.0, 0.0])
    expected = [0, 0]
    n = 0
    for s in samples:
        if not s.annotations:
            continue
        n += 1
        h, w = load_gray(s.image_path).shape
        x1, y1, x2, y2 = s.annotations[0].box
        x1, x2, y1, y2 = x1 * grid / w, x2 * grid / w, y1 * grid / h, y2 * grid / h
        c = grid / 2 - 1  # the first of the four tied maxima of a centred Gaussian on an even grid
        d = math.hypot(max(x1 - c, 0.0, c - x2), max(y1 - c, 0.0, c - y2))
        expected[0] += d <= 4.0
        expected[1] += d == 0.0
    assert [r.n for r in results] == [n, n] and n > 0
    assert [r.hits for r in results] == expected
