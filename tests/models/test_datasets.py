"""Dataset readers on hand-written CSVs: Object-CXR and generic layouts, shapes, malformed rows, images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.datasets import (
    ELLIPSE,
    POLYGON,
    RECTANGLE,
    Annotation,
    DatasetError,
    Sample,
    dataset_fingerprint,
    load_gray,
    read_csv,
    read_split,
)


def _write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.zeros((8, 10), np.uint8)).save(folder / name)


@pytest.fixture()
def object_cxr(tmp_path: Path) -> Path:
    _write_images(tmp_path / "dev", ["a.png", "b.png", "c.png", "d.png"])
    (tmp_path / "dev.csv").write_text(
        "image_name,annotation\n"
        "a.png,0 10 20 30 40\n"
        "b.png,\n"
        "c.png,1 50 60 70 100;2 5 5 25 3 15 30 1 12\n"
        "d.png\n"  # a negative without the trailing comma
    )
    return tmp_path


def test_object_cxr_all_annotation_types(object_cxr: Path):
    samples = read_split(object_cxr, "dev")
    assert [s.image_path.name for s in samples] == ["a.png", "b.png", "c.png", "d.png"]
    assert [s.label for s in samples] == [1, 0, 1, 0]
    assert all(s.image_path == object_cxr / "dev" / s.image_path.name for s in samples)
    (rect,) = samples[0].annotations
    assert rect.kind == RECTANGLE and rect.box == (10, 20, 30, 40)
    ellipse, polygon = samples[2].annotations
    assert ellipse.kind == ELLIPSE and ellipse.box == (50, 60, 70, 100)  # the ellipse's corners
    assert polygon.kind == POLYGON
    assert polygon.points == ((5, 5), (25, 3), (15, 30), (1, 12))
    assert polygon.box == (1, 3, 25, 30)  # min/max of the vertices
    assert samples[2].boxes == [(50, 60, 70, 100), (1, 3, 25, 30)]
    assert samples[1].annotations == () and samples[1].boxes == []


def test_image_path_header_and_paths_relative_to_root(tmp_path: Path):
    _write_images(tmp_path / "train", ["x.jpg"])
    _write_images(tmp_path / "elsewhere", ["y.jpg"])
    (tmp_path / "train.csv").write_text("image_path,annotation\ntrain/x.jpg,0 1 2 3 4\nelsewhere/y.jpg,\n")
    samples = read_split(tmp_path, "train")
    assert samples[0].image_path == tmp_path / "train" / "x.jpg"
    assert samples[1].image_path == tmp_path / "elsewhere" / "y.jpg"
    assert [s.label for s in samples] == [1, 0]


def test_reversed_corners_still_give_a_proper_box():
    a = Annotation(RECTANGLE, ((30.0, 40.0), (10.0, 20.0)))
    assert a.box == (10.0, 20.0, 30.0, 40.0)
    assert a.contains(20, 30)


def test_generic_csv(tmp_path: Path):
    _write_images(tmp_path, ["p.png", "n.png", "q.png", "r.png"])
    csv_path = tmp_path / "list.csv"
    csv_path.write_text(
        "image,label,boxes\np.png,1,1 2 3 4;10 20 30 40\nn.png,0,\nq.png,foreign_object,\nr.png,no_foreign_object,\n"
    )
    samples = read_csv(csv_path, tmp_path)
    assert [s.label for s in samples] == [1, 0, 1, 0]
    assert samples[0].boxes == [(1, 2, 3, 4), (10, 20, 30, 40)]
    assert all(a.kind == RECTANGLE for a in samples[0].annotations)


def test_generic_csv_custom_class_name(tmp_path: Path):
    _write_images(tmp_path, ["p.png", "n.png"])
    csv_path = tmp_path / "l.csv"
    csv_path.write_text("image,label\np.png,metal\nn.png,clean\n")
    with pytest.raises(DatasetError, match=r"l\.csv line 2: label 'metal'"):
        read_csv(csv_path, tmp_path)
    assert [s.label for s in read_csv(csv_path, tmp_path, positive_class="metal")] == [1, 0]


@pytest.mark.parametrize(
    "row, message",
    [
        ("a.png,3 1 2 3 4", r"dev\.csv line 3: object 1 .*type 3 is not 0"),
        ("a.png,x 1 2 3 4", r"dev\.csv line 3: object 1 .*type 'x'"),
        ("a.png,0 1 2 3 4 5", r"dev\.csv line 3: object 1 .*odd number of coordinates \(5\)"),
        ("a.png,0 1 2 3 4;2 1 2 3 4 5", r"dev\.csv line 3: object 2 .*odd number"),
        ("a.png,0 1 2 three 4", r"dev\.csv line 3: object 1 .*coordinate 'three' is not a number"),
        ("a.png,1 1 2 3 4 5 6", r"dev\.csv line 3: object 1 .*an ellipse needs 4 coordinates"),
        ("a.png,2 1 2 3 4", r"dev\.csv line 3: object 1 .*a polygon needs at least 3 vertices"),
        ("a.png,0 1 nan 3 4", r"dev\.csv line 3: object 1 .*not finite"),
        (",0 1 2 3 4", r"dev\.csv line 3: empty image name"),
        ("missing.png,", r"dev\.csv line 3: image 'missing\.png' not found"),
    ],
)
def test_malformed_object_cxr_rows_name_file_and_line(tmp_path: Path, row: str, message: str):
    _write_images(tmp_path / "dev", ["a.png"])
    (tmp_path / "dev.csv").write_text(f"image_name,annotation\na.png,\n{row}\n")
    with pytest.raises(DatasetError, match=message):
        read_split(tmp_path, "dev")


def test_malformed_generic_rows(tmp_path: Path):
    _write_images(tmp_path, ["a.png"])
    cases = [
        ("image,label,boxes\na.png,1,1 2 3\n", r"g\.csv line 2: box 1 .*needs 4 numbers"),
        ("image,label,boxes\na.png,0,1 2 3 4\n", r"g\.csv line 2: a negative image .* has boxes"),
        ("image,label,boxes\na.png\n", r"g\.csv line 2: expected 3 columns"),
        ("image,label,boxes\na.png,1,1 2 3 z\n", r"g\.csv line 2: box 1: coordinate 'z' is not a number"),
        ("name,whatever\na.png,1\n", r"g\.csv line 1: header .* neither Object-CXR"),
        ("", r"g\.csv line 1: empty file"),
    ]
    for text, message in cases:
        path = tmp_path / "g.csv"
        path.write_text(text)
        with pytest.raises(DatasetError, match=message):
            read_csv(path, tmp_path)


def test_missing_csv_is_a_dataset_error(tmp_path: Path):
    with pytest.raises(DatasetError, match=r"test\.csv: no such file"):
        read_split(tmp_path, "test")


def test_contains_rectangle_ellipse_polygon():
    rect = Annotation(RECTANGLE, ((10, 10), (20, 30)))
    assert rect.contains(10, 10) and rect.contains(20, 30) and rect.contains(15, 20)
    assert not rect.contains(9.9, 15) and not rect.contains(15, 30.1)

    ellipse = Annotation(ELLIPSE, ((0, 0), (20, 10)))  # centre (10, 5), semi-axes 10 and 5
    assert ellipse.contains(10, 5) and ellipse.contains(0, 5) and ellipse.contains(10, 0)
    assert not ellipse.contains(1, 1)  # inside the box's corner, outside the ellipse
    # (18, 7.5): ((8/10)^2 + (2.5/5)^2) = 0.89 ≤ 1 → inside; (19, 8): 0.81 + 0.36 = 1.17 → outside
    assert ellipse.contains(18, 7.5) and not ellipse.contains(19, 8)

    # A concave "L": the notch (15, 5) is outside even though it is inside the bounding box.
    poly = Annotation(POLYGON, ((0, 0), (10, 0), (10, 10), (20, 10), (20, 20), (0, 20)))
    assert poly.contains(5, 5) and poly.contains(15, 15) and poly.contains(5, 15)
    assert not poly.contains(15, 5)
    assert poly.contains(10, 5)  # on an edge counts as inside
    assert not poly.contains(25, 15)


def test_contains_polygon_matches_matplotlib():
    from matplotlib.path import Path as MplPath

    rng = np.random.default_rng(3)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
    radii = rng.uniform(5, 20, 9)
    verts = tuple((float(50 + r * np.cos(a)), float(50 + r * np.sin(a))) for a, r in zip(angles, radii))
    poly = Annotation(POLYGON, verts)
    reference = MplPath(np.array(verts))
    for x, y in rng.uniform(25, 75, (400, 2)):
        assert poly.contains(x, y) == reference.contains_point((x, y)), (x, y)


def test_load_gray_bit_depths_and_colour(tmp_path: Path):
    values16 = np.arange(12 * 9, dtype=np.uint16).reshape(12, 9) * 600
    Image.fromarray(values16).save(tmp_path / "g16.png")
    got16 = load_gray(tmp_path / "g16.png")
    # The model's view: float32 in [0, 1] by the bit depth's full scale (models.imaging, as /assess decodes).
    assert got16.dtype == np.float32 and np.allclose(got16, values16 / 65535.0, atol=1e-7)

    values8 = np.arange(6 * 7, dtype=np.uint8).reshape(6, 7) * 5
    Image.fromarray(values8).save(tmp_path / "g8.png")
    got8 = load_gray(tmp_path / "g8.png")
    assert got8.dtype == np.float32 and np.allclose(got8, values8 / 255.0, atol=1e-7)

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb).save(tmp_path / "c.png")
    lum = load_gray(tmp_path / "c.png")
    # ITU-R 601-2 luma: (200·299 + 100·587 + 50·114) / 1000 = 124.2
    assert lum.shape == (4, 5) and np.all(np.abs(lum * 255.0 - 124.2) <= 1.0)

    Image.fromarray(values8).save(tmp_path / "g.jpg", quality=95)
    assert load_gray(tmp_path / "g.jpg").shape == (6, 7)

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DatasetError, match="broken.png: cannot decode"):
        load_gray(tmp_path / "broken.png")
    with pytest.raises(DatasetError, match="nothere.png: no such image"):
        load_gray(tmp_path / "nothere.png")


def test_load_gray_dicom_applies_the_modality_lut_and_min_max():
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    got = load_gray(path)
    # Independent reference: Rescale Slope/Intercept by pydicom; CT_small has no window, so min–max (docs/formats.md).
    assert "WindowCenter" not in ds and float(ds.RescaleIntercept) == -1024
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    expected = (hu - hu.min()) / (hu.max() - hu.min())
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-5


def test_fingerprint_is_stable_and_sensitive(object_cxr: Path):
    a = read_split(object_cxr, "dev")
    assert dataset_fingerprint(a) == dataset_fingerprint(read_split(object_cxr, "dev"))
    changed = list(a)
    changed[1] = Sample(a[1].image_path, 1, (Annotation(RECTANGLE, ((0, 0), (1, 1))),))
    assert dataset_fingerprint(changed) != dataset_fingerprint(a)
    assert dataset_fingerprint(a[:3]) != dataset_fingerprint(a)
    before = dataset_fingerprint(a)
    a[0].image_path.write_bytes(a[0].image_path.read_bytes() + b"\0" * 10)  # same name, different size
    assert dataset_fingerprint(a) != before
    assert len(before) == 64 and int(before, 16) >= 0
