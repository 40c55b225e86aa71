"""``python -m models.synth.cmr.contact_sheet --out docs/cmr-synthetic-samples.png``: the generator at a glance.

Rows: (1) frames across the cardiac cycle of an LVOT-positive patient, LVOT boxes in yellow, captions with the
frame's trigger time and label; (2) the same frames zoomed on the heart; (3) an LVOT-negative patient across
its cycle; (4) end-diastolic frames of further patients, showing the spread of field of view, matrix, long-axis
angle, SNR, coil bias and bSSFP banding. Patients come from the ``test`` split of ``--seed``.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from models.synth.cmr.patient import Patient, sample_patient
from models.synth.cmr.render import CineRenderer, Frame

CAPTION_H = 28
BOX_COLOUR = (255, 220, 0)
POSITIVE_COLOUR = (255, 120, 90)
NEGATIVE_COLOUR = (120, 230, 120)


def _tile(frame: Frame, size: int, crop: tuple[int, int, int, int] | None = None) -> tuple[Image.Image, float]:
    """The frame (or its ``crop``) scaled to fit ``size`` × ``size``, with its box; returns (tile, scale)."""
    im = Image.fromarray(np.round(frame.unit * 255.0).astype(np.uint8)).convert("RGB")
    ox, oy = 0, 0
    if crop is not None:
        im = im.crop(crop)
        ox, oy = crop[0], crop[1]
    scale = size / max(im.width, im.height)
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    if frame.box is not None:
        x1, y1, x2, y2 = frame.box
        ImageDraw.Draw(im).rectangle(
            [(x1 - ox) * scale, (y1 - oy) * scale, (x2 + 1 - ox) * scale, (y2 + 1 - oy) * scale],
            outline=BOX_COLOUR,
            width=2,
        )
    return im, scale


def _first(seed: int, positive: bool, start: int = 0) -> Patient:
    index = start
    while True:
        p = sample_patient(seed, "test", index)
        if p.positive == positive:
            return p
        index += 1


def _heart_crop(patient: Patient, frames: list[Frame]) -> tuple[int, int, int, int]:
    """A square around the heart: centred on the boxes (or the crux), ~130 mm wide."""
    acq = patient.acquisition
    boxes = [f.box for f in frames if f.box is not None]
    if boxes:
        cx = float(np.mean([(b[0] + b[2]) / 2 for b in boxes]))
        cy = float(np.mean([(b[1] + b[3]) / 2 for b in boxes]))
    else:
        cx = patient.heart.crux_x / acq.pixel_spacing_mm + acq.cols / 2
        cy = patient.heart.crux_y / acq.pixel_spacing_mm + acq.rows / 2
    half = round(65.0 / acq.pixel_spacing_mm)
    return round(cx) - half, round(cy) - half, round(cx) + half, round(cy) + half


def contact_sheet(seed: int = 0, columns: int = 8, tile: int = 180) -> Image.Image:
    positive, negative = _first(seed, True), _first(seed, False)
    others = [sample_patient(seed, "test", i) for i in range(2, 2 + columns)]
    sheet = Image.new("RGB", (columns * tile, 4 * (tile + CAPTION_H)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)

    def caption(col: int, row: int, text: str, colour: tuple[int, int, int]) -> None:
        draw.text((col * tile + 4, row * (tile + CAPTION_H) + tile + 2), text[:34], fill=colour)

    def paste(im: Image.Image, col: int, row: int) -> None:
        sheet.paste(im, (col * tile + (tile - im.width) // 2, row * (tile + CAPTION_H) + (tile - im.height) // 2))

    for row, patient in ((0, positive), (2, negative)):
        renderer = CineRenderer(patient)
        picks = np.linspace(0, patient.n_frames - 1, columns).round().astype(int)
        frames = [renderer.frame(int(k)) for k in picks]
        crop = _heart_crop(patient, renderer.frames()) if row == 0 else None
        for col, f in enumerate(frames):
            paste(_tile(f, tile)[0], col, row)
            label = "LVOT" if f.label else "no LVOT"
            colour = POSITIVE_COLOUR if f.label else NEGATIVE_COLOUR
            caption(col, row, f"f{f.frame_index} {f.trigger_time_ms:.0f} ms {label}", colour)
            if crop is not None:
                paste(_tile(f, tile, crop)[0], col, row + 1)
                caption(col, row + 1, "zoom: " + label, colour)
    for col, patient in enumerate(others):
        f = CineRenderer(patient).frame(0)
        paste(_tile(f, tile)[0], col, 3)
        acq = patient.acquisition
        text = (
            f"{acq.cols}x{acq.rows} {acq.cols * acq.pixel_spacing_mm:.0f}mm SNR{acq.snr:.0f} {acq.field_strength_t:g}T"
        )
        caption(col, 3, text, (200, 200, 200))
    return sheet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.synth.cmr.contact_sheet", description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--columns", type=int, default=8)
    ap.add_argument("--tile", type=int, default=180)
    args = ap.parse_args(argv)
    contact_sheet(args.seed, args.columns, args.tile).save(args.out, optimize=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
