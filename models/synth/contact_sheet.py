"""``python -m models.synth.contact_sheet --out docs/synthetic-samples.png``: a grid of synthetic samples.

Each tile is one image of the generator (seed, split ``test``, ``--style``, default v2) with its annotations
drawn: rectangles in yellow, ellipses in cyan, polygons in magenta; objects that the annotation rule leaves
unannotated (outside the lung fields) get a thin dotted red box, which is not part of the data. The caption says
POSITIVE (and the annotated object kinds) or NEGATIVE, then the unannotated objects and look-alikes. Below the
grid, a strip of close-ups shows one annotated object of each kind (from the ``dev`` split), without boxes.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from models.datasets import ELLIPSE, RECTANGLE
from models.synth.styles import DEFAULT_STYLE, STYLES, render_sample

COLOURS = {RECTANGLE: (255, 220, 0), ELLIPSE: (0, 230, 255), 2: (255, 60, 255)}


def contact_sheet(
    seed: int = 0,
    rows: int = 4,
    cols: int = 4,
    size: int = 512,
    tile: int = 300,
    split: str = "test",
    first: int = 0,
    boxes: bool = True,
    style: str = DEFAULT_STYLE,
) -> Image.Image:
    caption_h = 30
    sheet = Image.new("RGB", (cols * tile, rows * (tile + caption_h)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for k in range(rows * cols):
        r = render_sample(seed, split, first + k, size, style=style)
        h, w = r.image.shape
        scale = tile / max(h, w)
        im = Image.fromarray(np.round(r.image * 255).astype(np.uint8)).convert("RGB")
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
        ox = (k % cols) * tile + (tile - im.width) // 2
        oy = (k // cols) * (tile + caption_h)
        sheet.paste(im, (ox, oy))
        if boxes:
            for a in r.annotations:
                pts = [(ox + x * scale, oy + y * scale) for x, y in a.points]
                colour = COLOURS[a.kind]
                if a.kind == RECTANGLE:
                    draw.rectangle([pts[0], pts[1]], outline=colour, width=1)
                elif a.kind == ELLIPSE:
                    draw.ellipse([pts[0], pts[1]], outline=colour, width=1)
                else:
                    draw.polygon(pts, outline=colour)
            for o in r.objects:
                if o.annotation is None:  # unannotated (outside the lungs): a dotted box, not part of the data
                    oh, ow = o.density.shape
                    x1, y1 = ox + max(o.x0, 0) * scale, oy + max(o.y0, 0) * scale
                    x2, y2 = ox + min(o.x0 + ow, w) * scale, oy + min(o.y0 + oh, h) * scale
                    for t in np.arange(0.0, 1.0, 0.12):
                        for a0, b0 in (
                            ((x1, y1), (x2, y1)),
                            ((x2, y1), (x2, y2)),
                            ((x2, y2), (x1, y2)),
                            ((x1, y2), (x1, y1)),
                        ):
                            p0 = (a0[0] + (b0[0] - a0[0]) * t, a0[1] + (b0[1] - a0[1]) * t)
                            p1 = (a0[0] + (b0[0] - a0[0]) * (t + 0.06), a0[1] + (b0[1] - a0[1]) * (t + 0.06))
                            draw.line([p0, p1], fill=(230, 60, 60), width=1)
        others = sorted({o.kind for o in r.objects if o.annotation is None})
        extra = ("; not annotated: " + ", ".join(others)) if others else ""
        if r.label:
            text = "POSITIVE: " + ", ".join(sorted(set(r.object_kinds))) + extra
        else:
            text = "NEGATIVE" + extra + ("; " + ", ".join(r.lookalikes) if r.lookalikes and not others else "")
        colour = (255, 120, 90) if r.label else (120, 230, 120)
        cx = (k % cols) * tile + 4
        draw.text((cx, oy + tile + 2), text[:52], fill=colour)
        if len(text) > 52:
            draw.text((cx, oy + tile + 14), text[52:104], fill=colour)
    return sheet


def gallery_kinds(style: str) -> list[str]:
    """The object kinds that ``style`` annotates, in its own order (support devices are never annotated in v2)."""
    if style == "v1":
        from models.synth.objects import FOREIGN_OBJECTS

        return [*list(FOREIGN_OBJECTS), "ecg_lead", "pendant"]
    if style == "v2":
        from models.synth.v2.objects import ANNOTATED_KINDS

        return list(ANNOTATED_KINDS)
    from models.synth.heldout.items import LUNG_KINDS

    return list(LUNG_KINDS)


def object_gallery(
    seed: int = 0,
    size: int = 512,
    crop: int = 96,
    split: str = "dev",
    max_images: int = 400,
    style: str = DEFAULT_STYLE,
) -> Image.Image:
    """One zoomed crop per annotated object kind (the first of each found in ``split``), captioned, no boxes."""
    wanted = gallery_kinds(style)
    found: dict[str, Image.Image] = {}
    for index in range(max_images):
        if len(found) == len(wanted):
            break
        r = render_sample(seed, split, index, size, style=style, label=1)
        for a, kind in zip(r.annotations, r.object_kinds):
            if kind in found or kind not in wanted:
                continue
            x1, y1, x2, y2 = a.box
            half = max(x2 - x1, y2 - y1) / 2 + 6
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            h, w = r.image.shape
            box = (int(max(0, cx - half)), int(max(0, cy - half)), int(min(w, cx + half)), int(min(h, cy + half)))
            im = Image.fromarray(np.round(r.image * 255).astype(np.uint8)).crop(box)
            found[kind] = im.resize((crop, crop), Image.Resampling.LANCZOS)
    kinds = [k for k in wanted if k in found]
    strip = Image.new("RGB", (len(kinds) * crop, crop + 16), (24, 24, 24))
    draw = ImageDraw.Draw(strip)
    for i, kind in enumerate(kinds):
        strip.paste(found[kind].convert("RGB"), (i * crop, 0))
        draw.text((i * crop + 3, crop + 2), kind, fill=(255, 120, 90))
    return strip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.synth.contact_sheet", description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--cols", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--tile", type=int, default=300)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--no-boxes", action="store_true")
    ap.add_argument("--no-gallery", action="store_true", help="leave out the strip of object close-ups")
    ap.add_argument("--style", choices=STYLES, default=DEFAULT_STYLE)
    args = ap.parse_args(argv)
    sheet = contact_sheet(
        args.seed,
        args.rows,
        args.cols,
        args.size,
        args.tile,
        first=args.first,
        boxes=not args.no_boxes,
        style=args.style,
    )
    if not args.no_gallery:
        count = len(gallery_kinds(args.style))
        strip = object_gallery(args.seed, args.size, crop=sheet.width // count, style=args.style)
        combined = Image.new("RGB", (sheet.width, sheet.height + strip.height + 8), (24, 24, 24))
        combined.paste(sheet, (0, 0))
        combined.paste(strip, (0, sheet.height + 8))
        sheet = combined
    sheet.save(args.out, optimize=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
