"""The synthetic radiograph generator: determinism, annotations around objects, CSV round trip."""

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
            assert img.dtype == np.float32 and h == SIZE and 0.8 * SIZE - 1 <= w <= SIZE
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


def test_every_annotation_surrounds_its_object():
    """Rendering a positive with and without its objects: every changed pixel is inside some box, every box
    has changed (brighter) pixels, and the object's pixels are brighter than the ring around its box."""
    kinds_seen: set[int] = set()
    positives = 0
    for index in range(40):
        with_obj = render_sample(11, "test", index, 256)
        if not with_obj.label:
            assert with_obj.annotations == ()
            continue
        positives += 1
        without = render_sample(11, "test", index, 256, with_objects=False)
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
            # The object is brighter than the image around the annotation (what a reader would see).
            assert np.percentile(obj_pixels, 90) > _ring_mean(with_obj.image, a.box, 4), (index, a)
        assert not (diff[~covered] > 1e-6).any(), f"image {index}: object pixels outside every box"
    assert positives >= 10
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
