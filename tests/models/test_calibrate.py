"""models.calibrate: temperature scaling recovers a known temperature; ECE, Brier, the thresholds and the bootstrap
agree with independent computations; the audit export's rows become labelled margins by the documented rules;
the command writes a versioned block the service accepts, keeps earlier temperatures, and a report."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from models import calibrate as cal
from models.checkpoint import load_checkpoint, read_metadata
from models.datasets import load_gray
from tests.helpers import dicom_bytes, make_checkpoint, png_bytes, radiograph


def nll_grid_minimum(margins, labels, grid):
    """Independent: the NLL of σ(m/T) on a grid of T, by plain formulas."""
    best = None
    for t in grid:
        p = 1 / (1 + np.exp(-margins / t))
        p = np.clip(p, 1e-12, 1 - 1e-12)
        nll = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
        if best is None or nll < best[1]:
            best = (t, nll)
    return best[0]


def test_fit_temperature_recovers_the_temperature_that_made_the_data():
    rng = np.random.default_rng(0)
    true_margins = rng.normal(0, 2.5, 20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-true_margins))).astype(np.int64)
    overconfident = true_margins * 3.0  # a model 3× too sure of itself: T should come out near 3
    t = cal.fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    assert t == pytest.approx(nll_grid_minimum(overconfident, labels, np.linspace(2.0, 4.0, 2001)), abs=2e-3)
    # Calibrating leaves the ranking alone: the order of probabilities is the order of margins.
    assert np.array_equal(np.argsort(cal.calibrated(overconfident, t)), np.argsort(overconfident))
    with pytest.raises(cal.CalibrationError):
        cal.fit_temperature(overconfident[:10], np.ones(10, dtype=np.int64))


def test_ece_and_brier_by_hand():
    probs = np.array([0.05, 0.1, 0.12, 0.5, 0.52, 0.9, 0.95, 1.0])
    labels = np.array([0, 0, 1, 1, 0, 1, 1, 1])
    # 15 bins of width 1/15: [0, .0667) holds .05; [.0667, .133) holds .1, .12; [.467, .533) holds .5, .52;
    # [.867, .933) holds .9; [.933, 1] holds .95 and 1.0.
    expected = (
        1 / 8 * abs(0 - 0.05)
        + 2 / 8 * abs(0.5 - 0.11)
        + 2 / 8 * abs(0.5 - 0.51)
        + 1 / 8 * abs(1 - 0.9)
        + 2 / 8 * abs(1 - 0.975)
    )
    assert cal.expected_calibration_error(probs, labels) == pytest.approx(expected)
    assert cal.brier_score(probs, labels) == pytest.approx(np.mean((probs - labels) ** 2))
    bins = cal.reliability_bins(probs, labels)
    assert sum(b["n"] for b in bins) == 8 and bins[1]["positive_rate"] == 0.5


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95, 1.0])
def test_sensitivity_threshold_is_the_largest_that_reaches_the_target(target):
    rng = np.random.default_rng(1)
    probs = np.round(rng.random(300), 2).clip(0.01, 1)  # ties on purpose
    labels = (rng.random(300) < probs).astype(np.int64)
    t = cal.threshold_for_sensitivity(probs, labels, target)
    sensitivity = lambda th: np.mean(probs[labels == 1] >= th)  # noqa: E731
    # Brute force: the largest observed probability that still reaches the target takes the same decisions.
    best = max(c for c in np.unique(probs) if sensitivity(c) >= target)
    assert np.array_equal(probs >= t, probs >= best)
    assert not np.any(np.isclose(probs, t, atol=1e-9))  # no case sits on the threshold


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.33, 0.5, 1.0])
def test_reacquire_rate_threshold_is_the_smallest_that_stays_under_the_rate(rate):
    rng = np.random.default_rng(2)
    probs = np.round(rng.random(200), 2).clip(0.01, 1)  # ties on purpose
    t = cal.threshold_for_reacquire_rate(probs, rate)
    share = lambda th: np.mean(probs >= th)  # noqa: E731
    candidates = [*np.unique(probs), 1.01]
    best = min(c for c in candidates if share(c) <= rate)  # brute force: the most re-acquisitions allowed
    assert np.array_equal(probs >= t, probs >= best)
    assert not np.any(np.isclose(probs, t, atol=1e-9))


def test_bootstrap_interval_is_the_percentiles_of_the_resampled_statistic():
    values = np.random.default_rng(3).normal(10, 2, 50)
    low, high = cal.bootstrap_interval(lambda i: float(values[i].mean()), 50, 500, seed=7)
    rng = np.random.default_rng(7)
    means = [values[rng.integers(0, 50, 50)].mean() for _ in range(500)]
    assert (low, high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert low < values.mean() < high


def test_verdict_rules():
    assert cal.label_of_verdict("reacquire", "agree") == 1
    assert cal.label_of_verdict("accept", "agree") == 0
    assert cal.label_of_verdict("accept", "reacquired_anyway") == 1
    assert cal.label_of_verdict("reacquire", "accepted_anyway") == 0
    assert cal.label_of_verdict("reacquire", "wrong_location") is None
    assert cal.label_of_verdict("unassessable", "agree") is None


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = make_checkpoint(tmp_path_factory.mktemp("cal") / "default", seed=3)
    meta = json.loads((folder / "model.json").read_text())
    meta["calibration"] = {
        "version": "site-1",
        "temperature": 2.0,
        "threshold": 0.4,
        "target": "sensitivity 0.95",
        "fitted_on": "a test",
        "earlier_temperatures": {"site-0": 0.5},
    }
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


EXPORT_COLUMNS = ["assessment_id", "decision", "probability", "calibration", "weights_sha256", "verdict"]


def write_export(path, rows):
    columns = [*EXPORT_COLUMNS, "sop_instance_uid", "verdict_note"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})


def test_audit_export_rows_become_margins_and_labels(checkpoint, tmp_path):
    ck = load_checkpoint(checkpoint)
    sha = cal.weights_sha256(checkpoint)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    true = [1.5, -0.7, 3.2, -2.4, 0.3]
    rows = [
        # under the current calibration (T = 2), under an earlier one (T = 0.5), uncalibrated (T = 1)
        {"decision": "reacquire", "probability": sigmoid(true[0] / 2), "calibration": "site-1", "verdict": "agree"},
        {"decision": "accept", "probability": sigmoid(true[1] / 0.5), "calibration": "site-0", "verdict": "agree"},
        {"decision": "reacquire", "probability": sigmoid(true[2]), "calibration": "", "verdict": "accepted_anyway"},
        {
            "decision": "accept",
            "probability": sigmoid(true[3] / 2),
            "calibration": "site-1",
            "verdict": "reacquired_anyway",
        },
        # left out: no verdict, wrong location, unknown calibration, other weights, unassessable
        {"decision": "accept", "probability": 0.2, "calibration": "site-1", "verdict": ""},
        {"decision": "reacquire", "probability": 0.9, "calibration": "site-1", "verdict": "wrong_location"},
        {"decision": "accept", "probability": 0.2, "calibration": "site-9", "verdict": "agree"},
        {"decision": "accept", "probability": 0.2, "calibration": "", "verdict": "agree", "weights_sha256": "0" * 64},
        {"decision": "unassessable", "probability": "", "calibration": "", "verdict": "agree"},
    ]
    for row in rows:
        row.setdefault("weights_sha256", sha)
    # A case whose DICOM file is at hand is run through the model again, whatever its recorded weights.
    image = radiograph(70, 60, seed=4, spot=(20, 30))
    dicom = dicom_bytes(image)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "case.dcm").write_bytes(dicom)
    import pydicom

    sop = pydicom.dcmread(tmp_path / "images" / "case.dcm").SOPInstanceUID
    rows.append(
        {
            "decision": "accept",
            "probability": 0.1,
            "calibration": "x",
            "verdict": "agree",
            "sop_instance_uid": sop,
            "weights_sha256": "f" * 64,
        }
    )
    write_export(tmp_path / "audit.csv", rows)

    cases = cal.cases_from_audit_export(tmp_path / "audit.csv", ck.model, ck.meta, sha, tmp_path / "images", 4)
    expected_rerun = cal.margins_of_images(ck.model, ck.meta, [load_gray(tmp_path / "images" / "case.dcm")], 4)[0]
    assert cases.margins[:4] == pytest.approx(true[:4], abs=1e-6)
    assert cases.margins[4] == pytest.approx(expected_rerun)
    assert cases.labels.tolist() == [1, 0, 0, 1, 0]
    assert cases.counts["no verdict"] == 1 and cases.counts["other weights"] == 1
    assert (
        cases.counts["unknown calibration site-9"] == 1 and cases.counts["left out: wrong_location on reacquire"] == 1
    )
    assert cases.counts["left out: agree on unassessable"] == 1 and cases.counts["run again from --data"] == 1

    write_export(tmp_path / "empty.csv", rows[4:6])
    with pytest.raises(cal.CalibrationError, match="no usable"):
        cal.cases_from_audit_export(tmp_path / "empty.csv", ck.model, ck.meta, sha, None, 4)
    (tmp_path / "other.csv").write_text("image,label\na.png,1\n")
    with pytest.raises(cal.CalibrationError, match="not a GET /audit CSV export"):
        cal.cases_from_audit_export(tmp_path / "other.csv", ck.model, ck.meta, sha, None, 4)


def tiny_dataset(root, n=24):
    (root / "dev").mkdir(parents=True)
    lines = ["image,label"]
    for i in range(n):
        positive = i % 2 == 1
        image = radiograph(72, 64, seed=i, spot=(30 + i % 7, 20 + i % 5) if positive else None)
        (root / "dev" / f"{i:03d}.png").write_bytes(png_bytes(image))
        lines.append(f"dev/{i:03d}.png,{int(positive)}")
    (root / "dev.csv").write_text("\n".join(lines) + "\n")
    return root


def test_command_writes_a_block_the_service_accepts_and_keeps_history(checkpoint, tmp_path, capsys):
    data = tiny_dataset(tmp_path / "data")
    before = (checkpoint / "model.json").read_text()
    report = tmp_path / "report.html"
    args = ["--model", str(checkpoint), "--data", str(data), "--bootstrap", "50", "--report", str(report)]
    assert cal.main([*args, "--dry-run", "--version", "dry"]) == 0
    assert (checkpoint / "model.json").read_text() == before  # a dry run writes nothing
    assert report.read_text().count("data:image/png;base64,") == 1

    assert cal.main([*args, "--target-reacquire-rate", "0.25", "--version", "site-2", "--eval-split", "dev"]) == 0
    meta = read_metadata(checkpoint)
    block = meta.calibration
    assert block.version == "site-2" and block.target == "re-acquire rate 0.25"
    assert block.earlier_temperatures == {"site-0": 0.5, "site-1": 2.0}
    assert meta.decision_threshold == block.threshold and meta.temperature == block.temperature
    # Independent check of the fitted numbers from the model's own logits.
    ck = load_checkpoint(checkpoint)
    margins = cal.margins_of_images(ck.model, ck.meta, [load_gray(data / "dev" / f"{i:03d}.png") for i in range(24)], 8)
    labels = np.array([i % 2 for i in range(24)])
    t = nll_grid_minimum(margins, labels, np.exp(np.linspace(math.log(0.05), math.log(20), 4001)))
    assert block.temperature == pytest.approx(t, rel=0.01)
    probs = 1 / (1 + np.exp(-margins / block.temperature))
    assert np.mean(probs >= block.threshold) <= 0.25
    fitted = block.metrics["fitted"]
    assert fitted["n"] == 24 and fitted["ece_after"]["value"] == pytest.approx(
        cal.expected_calibration_error(probs, labels), abs=1e-5
    )
    assert fitted["ece_after"]["ci95"][0] <= fitted["ece_after"]["ci95"][1]
    assert block.metrics["held_out"]["split"] == "dev" and block.metrics["checkpoint_version"] == "test-1"
    assert report.read_text().count("data:image/png;base64,") == 2  # fitted and held-out diagrams
    assert "site-2" in capsys.readouterr().out

    assert cal.main(["--model", str(checkpoint)]) == 2
    assert "--data ROOT" in capsys.readouterr().err
    assert cal.main([*args, "--target-sensitivity", "1.5"]) == 2
