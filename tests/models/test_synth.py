"""The synthetic radiograph generator: determinism, annotations around objects, CSV round trip, and generator v2's
annotation rule (Object-CXR: only objects over the lung fields are annotated) in both rendering styles."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from models.datasets import ELLIPSE, POLYGON, RECTANGLE, load_gray, read_split
from models.synth import generate, render_sample
from models.synth.lungs import LungMaskBank, find_v7_zip

SIZE = 128


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_a")
    generate(out, 8, 2, 2, size=SIZE, seed=7)
    return out


def test_same_seed_same_bytes_other_seed_differs(dataset: Path, tmp_path: Path):
    again = tmp_path / "again"
    generate(again, 8, 2, 2, size=SIZE, seed=7, workers=2)  # workers must not change a byte
    assert _digests(dataset) == _digests(again)
    other = tmp_path / "other"
    generate(other, 8, 2, 2, size=SIZE, seed=8)
    a, b = _digests(dataset), _digests(other)
    assert a.keys() == b.keys()
    assert sum(a[k] != b[k] for k in a if k.endswith(".png")) == 12


def test_image_depends_on_seed_split_index_only():
    # The 3rd training image is the same whether the split has 4 or 400 images: seeded per image.
    a = render_sample(5, "train", 3, SIZE)
    b = render_sample(5, "train", 3, SIZE)
    assert np.array_equal(a.image, b.image) and a.annotations == b.annotations
    assert not np.array_equal(a.image, render_sample(5, "dev", 3, SIZE).image)


def test_csv_round_trip_shapes_and_labels(dataset: Path):
    for split, n in (("train", 8), ("dev", 2), ("test", 2)):
        samples = read_split(dataset, split)
        assert len(samples) == n
        assert [s.image_path.name for s in samples] == [f"{i:05d}.png" for i in range(n)]
        for s in samples:
            img = load_gray(s.image_path)
            h, w = img.shape
            assert img.dtype == np.float32 and h == SIZE and 0.78 * SIZE - 1 <= w <= SIZE
            assert s.label == (1 if s.annotations else 0)
            for a in s.annotations:
                x1, y1, x2, y2 = a.box
                assert 0 <= x1 < x2 <= w - 1 and 0 <= y1 < y2 <= h - 1, (s.image_path, a)


def _ring_mean(img: np.ndarray, box, width: int) -> float:
    h, w = img.shape
    x1, y1, x2, y2 = (round(v) for v in box)
    X1, Y1, X2, Y2 = max(0, x1 - width), max(0, y1 - width), min(w - 1, x2 + width), min(h - 1, y2 + width)
    outer = img[Y1 : Y2 + 1, X1 : X2 + 1].astype(np.float64)
    inner = img[y1 : y2 + 1, x1 : x2 + 1].astype(np.float64)
    return (outer.sum() - inner.sum()) / max(outer.size - inner.size, 1)


@pytest.mark.parametrize("style", ["v2", "v1"])
def test_every_annotation_surrounds_its_object(style: str):
    """Rendering a positive with and without its (annotated) objects: every changed pixel is inside some box, every
    box has changed (brighter) pixels, and the object's pixels are brighter than the ring around its box."""
    kinds_seen: set[int] = set()
    positives = 0
    dimmer = 0
    for index in range(40):
        with_obj = render_sample(11, "test", index, 256, style=style)
        if not with_obj.label:
            assert with_obj.annotations == ()
            continue
        positives += 1
        without = render_sample(11, "test", index, 256, style=style, with_objects=False)
        assert without.annotations == with_obj.annotations
        diff = with_obj.image.astype(np.float64) - without.image
        assert diff.min() >= -1e-6  # objects only ever add density
        h, w = diff.shape
        covered = np.zeros_like(diff, bool)
        for a in with_obj.annotations:
            kinds_seen.add(a.kind)
            x1, y1, x2, y2 = a.box
            assert 0 <= x1 < x2 <= w - 1 and 0 <= y1 < y2 <= h - 1
            inside = np.zeros_like(covered)
            inside[int(y1) : int(y2) + 1, int(x1) : int(x2) + 1] = True
            covered |= inside
            changed = diff[inside] > 1e-6
            assert changed.any(), (index, a)
            obj_pixels = with_obj.image[inside][changed]
            # The object is brighter than the image around the annotation (what a reader would see); v2 also draws
            # faint plastic objects, which may sit on a brighter rib or the heart's edge.
            dimmer += np.percentile(obj_pixels, 90) <= _ring_mean(with_obj.image, a.box, 4)
        assert not (diff[~covered] > 1e-6).any(), f"image {index}: object pixels outside every box"
    assert positives >= 10
    assert dimmer <= (0 if style == "v1" else 0.15 * positives)
    assert kinds_seen == {RECTANGLE, ELLIPSE, POLYGON}


def test_about_half_positive_and_several_object_kinds():
    labels, kinds = [], set()
    for index in range(60):
        r = render_sample(3, "train", index, SIZE)
        labels.append(r.label)
        kinds.update(r.object_kinds)
    assert 0.3 <= np.mean(labels) <= 0.7
    assert len(kinds) >= 6


def test_formats(tmp_path: Path):
    generate(tmp_path / "p16", 2, 0, 0, size=SIZE, seed=1, fmt="png16")
    img16 = load_gray(tmp_path / "p16" / "train" / "00000.png")
    img8 = render_sample(1, "train", 0, SIZE).image
    assert np.abs(img16 - img8).max() < 1e-4  # load_gray: float32 in [0, 1] by the bit depth's full scale
    generate(tmp_path / "j", 1, 0, 0, size=SIZE, seed=1, fmt="jpg")
    assert (tmp_path / "j" / "train" / "00000.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert len(read_split(tmp_path / "j", "train")) == 1
    with pytest.raises(ValueError, match="format"):
        generate(tmp_path / "x", 1, 0, 0, size=SIZE, fmt="gif")


def test_procedural_lungs_without_the_mask_archive():
    bank = LungMaskBank("procedural")
    assert bank.source == "procedural"
    r = render_sample(2, "train", 0, SIZE, bank=bank)
    assert r.lung_mask_name == "procedural" and r.image.shape[0] == SIZE


@pytest.mark.skipif(find_v7_zip() is None, reason="torchxrayvision's lung mask archive is not installed")
def test_real_lung_masks_are_used_when_installed():
    r = render_sample(2, "train", 0, SIZE)
    assert r.lung_mask_name != "procedural"


def test_wire_outline_of_a_single_vertex_is_a_square_around_it():
    # A wire clipped down to one vertex used to crash np.gradient (seen on a generation run).
    from models.synth.objects import _buffer_polygon

    outline = _buffer_polygon(np.array([[10.0, 12.0]]), radius=3.0)
    xs, ys = zip(*outline)
    assert (min(xs), min(ys), max(xs), max(ys)) == (7.0, 9.0, 13.0, 15.0)


# --- generator v2 and the held-out style: Object-CXR's annotation rule --------------------------------------------


def _share_over(mask: np.ndarray, density: np.ndarray, x0: int, y0: int) -> float:
    """Share of an object's density over ``mask`` (computed here, from the returned patch and mask alone)."""
    h, w = density.shape
    H, W = mask.shape
    ya, yb, xa, xb = max(y0, 0), min(y0 + h, H), max(x0, 0), min(x0 + w, W)
    if ya >= yb or xa >= xb:
        return 0.0
    part = density[ya - y0 : yb - y0, xa - x0 : xb - x0]
    return float((part * mask[ya:yb, xa:xb]).sum()) / float(density.sum())


METAL_PEAK = 0.6  # both styles draw metal with a peak density of at least 0.6 (plastic/foam stays below 0.55)


@pytest.fixture(scope="module", params=["v2", "heldout"])
def styled(request) -> tuple[str, list]:
    # Procedural lungs: the rule does not depend on where the lung shapes come from, and decoding real masks is slow.
    bank = LungMaskBank("procedural")
    return request.param, [render_sample(4, "test", i, 192, style=request.param, bank=bank) for i in range(36)]


def test_annotated_objects_lie_over_the_lung_fields_and_the_others_outside(styled):
    style, rendered = styled
    annotated = unannotated = support_devices = over_lungs = 0
    for r in rendered:
        assert r.style == style and r.lung_field is not None and r.lung_field.shape == r.image.shape
        assert r.label == (1 if r.annotations else 0)  # positives carry ≥ 1 annotation, negatives none
        assert len(r.annotations) == sum(o.annotation is not None for o in r.objects)
        for o in r.objects:
            share = _share_over(r.lung_field, o.density, o.x0, o.y0)
            if o.annotation is None:
                unannotated += 1
                support_devices += o.support_device
                over_lungs += o.support_device and share >= 0.6
                assert share <= 0.1 or o.support_device, (o.kind, share)  # support devices: never annotated
            else:
                annotated += 1
                assert share >= 0.6 and not o.support_device, (o.kind, share)
                x1, y1, x2, y2 = o.annotation.box
                assert r.lung_field[int(y1) : int(y2) + 1, int(x1) : int(x2) + 1].any()
    assert annotated >= 12 and unannotated >= 12 and support_devices >= 6 and over_lungs >= 1


def test_unannotated_metal_occurs_in_negatives_and_the_rule_is_about_place_not_kind(styled):
    _, rendered = styled
    negatives = [r for r in rendered if r.label == 0]
    assert len(negatives) >= 8
    with_metal = [r for r in negatives if any(float(o.density.max()) >= METAL_PEAK for o in r.objects)]
    assert all(r.annotations == () for r in negatives)
    assert len(with_metal) >= 0.3 * len(negatives), f"{len(with_metal)} of {len(negatives)} negatives carry metal"
    annotated_kinds = {o.kind for r in rendered for o in r.objects if o.annotation is not None}
    other_kinds = {o.kind for r in rendered for o in r.objects if o.annotation is None and not o.support_device}
    assert annotated_kinds & other_kinds, (annotated_kinds, other_kinds)  # same kinds, unannotated elsewhere


def test_annotations_fit_their_objects_pixels(styled):
    """Every pixel an annotated object covers lies inside its annotation shape, and a box is tight around them."""
    _, rendered = styled
    for r in rendered:
        for o in r.objects:
            if o.annotation is None:
                continue
            ys, xs = np.nonzero(o.density)
            xs, ys = xs + o.x0, ys + o.y0
            x1, y1, x2, y2 = o.annotation.box
            assert x1 <= xs.min() and xs.max() <= x2 and y1 <= ys.min() and ys.max() <= y2, (o.kind, o.annotation)
            if o.annotation.kind == POLYGON:
                step = max(1, len(xs) // 200)
                assert all(o.annotation.contains(float(x), float(y)) for x, y in zip(xs[::step], ys[::step])), o.kind
                slack = 12.0  # an outline around a wire is a few pixels off its pixels
            else:
                slack = 1.0 + 1e-9
            assert (
                xs.min() - x1 <= slack and x2 - xs.max() <= slack and ys.min() - y1 <= slack and y2 - ys.max() <= slack
            )


def test_heldout_style_is_another_renderer():
    a = render_sample(4, "test", 0, 128, style="v2")
    b = render_sample(4, "test", 0, 128, style="heldout")
    again = render_sample(4, "test", 0, 128, style="heldout")
    assert np.array_equal(b.image, again.image) and b.annotations == again.annotations  # deterministic
    assert a.image.shape != b.image.shape or not np.array_equal(a.image, b.image)
    assert b.lung_mask_name == "heldout-fourier"  # its own lungs, not the V7 masks
    # Written independently: the held-out modules import nothing from v1/v2's drawing code.
    import ast

    import models.synth.heldout as heldout

    for path in Path(heldout.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(
                    ("models.synth.v2", "models.synth.objects", "models.synth.anatomy", "models.synth.lungs")
                ), (path.name, node.module)
    from models.synth.heldout.items import LUNG_KINDS
    from models.synth.v2.objects import ANNOTATED_KINDS

    assert set(LUNG_KINDS) != set(ANNOTATED_KINDS)


def test_mixed_format_writes_8_and_16_bit_pngs(tmp_path: Path):
    generate(tmp_path, 6, 0, 0, size=96, seed=3, fmt="mixed")
    # The PNG header's bit depth (IHDR byte 24): load_gray rescales both to float32 in [0, 1].
    depths = {s.image_path.read_bytes()[24] for s in read_split(tmp_path, "train")}
    assert depths == {8, 16}


def test_unknown_style_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="style"):
        render_sample(0, "train", 0, 128, style="v3")
    with pytest.raises(ValueError, match="style"):
        generate(tmp_path, 1, 0, 0, size=128, style="v3")


def test_missing_mask_archive_is_reported_once_and_procedural_lungs_are_drawn(monkeypatch):
    import warnings

    from models.synth import lungs

    monkeypatch.setattr(lungs, "find_v7_zip", lambda: None)
    monkeypatch.setattr(lungs, "_missing_masks_reported", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        banks = [LungMaskBank("auto") for _ in range(3)]
        LungMaskBank("procedural")  # asked for: nothing to report
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "torchxrayvision is not installed" in messages[0] and "procedural" in messages[0]
    assert all(b.source == "procedural" for b in banks)
    r = render_sample(2, "train", 0, SIZE, bank=banks[0])
    assert r.lung_mask_name == "procedural"
