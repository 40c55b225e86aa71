"""The generator's rendering styles and the one entry point that renders an image in any of them.

- ``v2`` (default): :mod:`models.synth.v2` — Object-CXR's annotation rule, unannotated objects outside the lungs
  in both classes, bright anatomy, acquisition randomised (docs/data.md, "Generator v2").
- ``heldout``: :mod:`models.synth.heldout` — an independently written second renderer (its own anatomy, objects and
  image formation) with the same annotation rule, for testing only: a model trained on ``v2`` is scored on it to
  see whether it learned the objects or the drawing style. Never train on it.
- ``v1``: :mod:`models.synth.render` — the first generator (objects anywhere on the trunk, all annotated), kept
  unchanged from before v2 for comparisons (the shipped default checkpoint's exact data come from the commit that
  docs/model-card.md names).

Every image is seeded from (seed, split, index) — and the style, so the styles never share random streams.
"""

from __future__ import annotations

import numpy as np

from models.synth.lungs import LungMaskBank
from models.synth.render import Rendered, RenderedObject, sample_seed
from models.synth.render import render_sample as render_v1

STYLES = ("v2", "heldout", "v1")
DEFAULT_STYLE = "v2"
_STYLE_CODES = {"v2": 2, "heldout": 7}


def style_seed(seed: int, split: str, index: int, style: str) -> np.random.SeedSequence:
    base = sample_seed(seed, split, index)
    return np.random.SeedSequence([*base.entropy, _STYLE_CODES[style]])  # type: ignore[misc]


def render_sample(
    seed: int,
    split: str,
    index: int,
    size: int = 1024,
    *,
    style: str = DEFAULT_STYLE,
    with_objects: bool = True,
    bank: LungMaskBank | None = None,
    label: int | None = None,
) -> Rendered:
    """Render image ``index`` of ``split`` for ``seed`` in ``style``.

    ``with_objects=False`` gives the same radiograph without its *annotated* objects (same anatomy, unannotated
    objects, exposure and noise); ``label`` forces the class.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    if size < 64:
        raise ValueError(f"size must be at least 64 pixels, got {size}")
    if style == "v1":
        return render_v1(seed, split, index, size, with_objects=with_objects, bank=bank, label=label)
    sequence = style_seed(seed, split, index, style)
    if style == "v2":
        from models.synth.v2.render import render_v2

        image, scene, overlay, display, positive = render_v2(
            sequence, size, with_objects=with_objects, bank=bank, label=label
        )
        from models.synth.v2.objects import SUPPORT_DEVICES

        objects = tuple(
            RenderedObject(
                o.kind, o.density, o.x0, o.y0, o.annotation if annotated else None, o.kind in SUPPORT_DEVICES
            )
            for annotated, group in ((True, scene.annotated), (False, scene.unannotated))
            for o in group
        )
        settings: dict[str, object] = {
            "projection": scene.projection,
            "bits": display.bits,
            "png16": display.png16,
            "blur": display.blur,
            "full_range_window": display.window_full_range,
            "tone": display.tone,
            "collimated": bool(not scene.exposed.all()),
        }
        return Rendered(
            image,
            int(positive),
            tuple(o.annotation for o in scene.annotated),
            tuple(o.kind for o in scene.annotated),
            tuple(scene.lookalikes + overlay.names),
            scene.mask_name,
            style="v2",
            objects=objects,
            lung_field=scene.lung_field,
            settings=settings,
        )
    from models.synth.heldout.scene import render_heldout

    return render_heldout(sequence, size, with_objects=with_objects, label=label)
