"""benchmarks/paper_run.py at smoke scale: the whole design (2 architectures × 2 seeds, pretext backbones, four
inits × σ ∈ {0, 1}) on a tiny data set, its report, and that a second invocation reuses everything on disk.

The Difference of Means in the report is recomputed here from the cell's per-image rows.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import sys

import numpy as np
import torch

from tests.helpers import REPO
from tests.models.tiny_cxr import write_tiny_dataset


def _paper_run_module():
    spec = importlib.util.spec_from_file_location("paper_run", REPO / "benchmarks" / "paper_run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_papers_design_runs_end_to_end_at_smoke_scale_and_resumes(tmp_path):
    torch.set_num_threads(1)
    paper_run = _paper_run_module()
    data = write_tiny_dataset(tmp_path / "data", {"train": 16, "dev": 8, "test": 8}, image_size=48)
    out = tmp_path / "run"
    argv = ["--train-data", str(data), "--test-data", f"v2={data}", "--scale", "smoke", "--out", str(out)]
    report = paper_run.main(argv)

    models = sorted(p.name for p in (out / "models").iterdir())
    assert models == ["efficientnet_b0-s0", "efficientnet_b0-s1", "resnet34-s0", "resnet34-s1"]
    cells = sorted(p.name for p in (out / "cells" / "v2").iterdir())
    assert len(cells) == 8 and "pretrained-backbone-sigma1" in cells
    cell = json.loads((out / "cells" / "v2" / "pretrained-backbone-sigma1" / "results.json").read_text())
    assert {m["init"] for m in cell["models"].values()} == {"pretrained-backbone"} and len(cell["models"]) == 4
    assert cell["tau_rel"] == 0.025 and cell["tau_px"] == 0.8  # 2.5 % of the 32 px smoke grid
    assert not (out / "cells" / "v2" / "trained-sigma0" / "report.html").exists()  # smoke: one report only
    text = report.read_text(encoding="utf-8")
    for title in ("Table 2", "Table 4", "Table 5"):
        assert title in text
    assert text.count("control-tophat (control)") == 3 and "0.853 ± 0.003" in text  # published R34 conv3x3 single

    # DoM of NormGrad conv1x1 combined (trained, σ = 1) from the per-image rows.
    with open(out / "cells" / "v2" / "trained-sigma1" / "per_image.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "normgrad-conv1x1-combined" and r["hit"] != ""]
    rate = {m: np.mean([int(r["hit"]) for r in rows if r["model"] == m]) for m in models}
    dom = abs(np.mean([rate["resnet34-s0"], rate["resnet34-s1"]]) - np.mean([rate[m] for m in models[:2]]))
    table5 = text[text.index("Table 5") : text.index("Classification")]
    row = re.search(r"<td>normgrad-conv1x1-combined</td>(.*?)</tr>", table5).group(1)
    assert f"<td>{dom:.3f}</td>" in row

    # A second invocation trains and evaluates nothing again; a removed cell is recomputed alone.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("models/*/model.json")}
    removed = out / "cells" / "v2" / "full-random-sigma0" / "results.json"
    kept = out / "cells" / "v2" / "trained-sigma0" / "results.json"
    kept_stamp = kept.stat().st_mtime_ns
    removed.unlink()
    paper_run.main(argv)
    assert {p: p.stat().st_mtime_ns for p in out.glob("models/*/model.json")} == stamps
    assert removed.is_file() and kept.stat().st_mtime_ns == kept_stamp
