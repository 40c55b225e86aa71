"""OOD scores of images a chest-radiograph gate should not judge, and which check stops each one first
(docs/model-card.md, "Out-of-distribution check").

For each probe: the Mahalanobis OOD score of the checkpoint (models.ood, the same features and statistics as
serving), whether it is over the threshold, and the reason the service would answer — routing for DICOM
(service.serving.routing with the checkpoint's ``serves`` block), then the image checks
(models.imaging.assessability, NORMGATE_MIN_IMAGE_SIDE default), then the OOD threshold. Synthetic test
radiographs from a data set folder are scored for comparison.

    .venv/bin/python benchmarks/ood_probes.py --model models/checkpoints/default \
        --radiographs data/normgate-default/test/test --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.checkpoint import load_checkpoint
from models.imaging import DecodedImage, decode_image
from models.imaging.assessability import DEFAULT_MIN_SIDE, check_assessable
from models.imaging.grid import resize_unit
from models.ood import extract_features
from service.serving.routing import InstanceAttributes, route


def _png(gray: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(gray.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def probes() -> dict[str, tuple[bytes, str]]:
    from pydicom.data import get_testdata_file
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:640, 0:540]
    smooth = gaussian_filter(rng.normal(size=(640, 540)), 8)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255
    png = {
        "blank (constant 128)": np.full((640, 540), 128),
        "black": np.zeros((640, 540)),
        "uniform noise": rng.integers(0, 256, (640, 540)),
        "smoothed noise (σ 8 px)": smooth,
        "checkerboard (40 px)": (((cols // 40) + (rows // 40)) % 2) * 200 + 20,
        "horizontal ramp": cols / 539 * 255,
    }
    found = {name: (_png(gray), "image/png") for name, gray in png.items()}
    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "examples_overlay.dcm"):
        found[f"pydicom {name}"] = (Path(get_testdata_file(name)).read_bytes(), "application/dicom")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/checkpoints/default")
    parser.add_argument("--radiographs", help="a folder of synthetic test radiographs (PNG) to score for comparison")
    parser.add_argument("--limit", type=int, default=50, help="radiographs scored from that folder")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.model)
    if checkpoint.ood is None or checkpoint.meta.ood is None:
        raise SystemExit(f"{args.model} has no OOD statistics (python -m models.ood fit)")
    meta, threshold = checkpoint.meta, checkpoint.meta.ood.threshold

    def score(decoded: DecodedImage) -> float:
        unit = resize_unit(decoded.pixels, meta.input_size)[None]
        return float(checkpoint.ood.score(extract_features(checkpoint.model, unit, meta.mean, meta.std))[0])

    rows = []
    for name, (body, media_type) in probes().items():
        decoded = decode_image(body, media_type)
        reason = None
        if decoded.source == "dicom" and route({meta.name: meta}, InstanceAttributes.of(decoded)) is None:
            reason = "unsupported_modality"
        reason = reason or check_assessable(decoded.pixels, decoded.number_of_frames, DEFAULT_MIN_SIDE)
        value = score(decoded)
        reason = reason or ("out_of_distribution" if value > threshold else None)
        rows.append({"probe": name, "ood_score": round(value, 1), "over": value > threshold, "answer": reason})
    summary: dict[str, object] = {"model": args.model, "version": meta.version, "threshold": round(threshold, 2)}
    if args.radiographs:
        files = sorted(Path(args.radiographs).glob("*.png"))[: args.limit]
        scores = [score(decode_image(path.read_bytes(), None)) for path in files]
        summary["radiographs"] = {
            "n": len(scores),
            "median": round(float(np.median(scores)), 1),
            "max": round(float(np.max(scores)), 1),
        }
    summary["probes"] = rows
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
