"""Dataset readers: the Object-CXR layout and a generic CSV (docs/formats.md, "Data sets").

Object-CXR (JF Healthcare, MIDL 2020 challenge, https://jfhealthcare.github.io/object-CXR/):
``ROOT/<split>.csv`` with header ``image_name,annotation`` (the challenge's own files say ``image_path``);
images under ``ROOT/<split>/`` or at the path given in the first column (relative to ROOT). ``annotation`` is
empty for a negative image, else ``;``-separated objects ``TYPE x1 y1 x2 y2 …`` in original pixels:
``0`` rectangle (two corners), ``1`` ellipse (the corners of its bounding box), ``2`` polygon (its vertices).
The ground-truth box of an object is the bounding box of its points.

Generic CSV: header ``image,label,boxes``; ``label`` is 0/1 or a class name; ``boxes`` is ``x1 y1 x2 y2;…``
(may be empty, or the column may be left out). Each box becomes a rectangle annotation.

A malformed row raises :class:`DatasetError` whose message starts with ``<file> line <n>:``.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.imaging import ImageError, decode_file

RECTANGLE, ELLIPSE, POLYGON = 0, 1, 2
_KIND_NAMES = {RECTANGLE: "rectangle", ELLIPSE: "ellipse", POLYGON: "polygon"}

# Class names accepted in the generic CSV's label column (lower-cased); the checkpoint's own names come first.
POSITIVE_LABELS = frozenset({"1", "foreign_object", "foreign object", "positive", "pos", "yes", "true"})
NEGATIVE_LABELS = frozenset({"0", "no_foreign_object", "no foreign object", "negative", "neg", "no", "false"})

# What models.imaging decodes, as /assess does (PNG, JPEG, DICOM).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")


class DatasetError(ValueError):
    """A data set file that cannot be read; the message names the file (and line, for CSV rows)."""


@dataclass(frozen=True)
class Annotation:
    """One annotated object in original pixel coordinates (x = column, y = row)."""

    kind: int  # 0 rectangle (2 corners), 1 ellipse (bounding-box corners), 2 polygon (vertices)
    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if self.kind not in _KIND_NAMES:
            raise ValueError(f"annotation kind must be 0, 1 or 2, got {self.kind!r}")
        need = 3 if self.kind == POLYGON else 2
        if (self.kind == POLYGON and len(self.points) < need) or (self.kind != POLYGON and len(self.points) != 2):
            raise ValueError(
                f"a {_KIND_NAMES[self.kind]} needs {'at least ' if self.kind == POLYGON else ''}"
                f"{need} points, got {len(self.points)}"
            )

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x1, y1, x2, y2): the bounding box of the points."""
        xs = [p[0] for p in self.points]
        ys = [p[1] for p in self.points]
        return min(xs), min(ys), max(xs), max(ys)

    def contains(self, x: float, y: float) -> bool:
        """Whether (x, y) lies inside the shape (boundary included); used by FROC."""
        x1, y1, x2, y2 = self.box
        if not (x1 <= x <= x2 and y1 <= y <= y2):
            return False
        if self.kind == RECTANGLE:
            return True
        if self.kind == ELLIPSE:
            a, b = (x2 - x1) / 2.0, (y2 - y1) / 2.0
            if a <= 0 or b <= 0:  # degenerate ellipse: the segment itself, already inside the box
                return True
            cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
            return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0 + 1e-12
        return _point_in_polygon(x, y, self.points)

    def to_object_cxr(self) -> str:
        """This object as an Object-CXR annotation field (``TYPE x1 y1 …``), integers written without '.0'."""
        coords = " ".join(_format_number(v) for p in self.points for v in p)
        return f"{self.kind} {coords}"


@dataclass(frozen=True)
class Sample:
    """One image with its label (1 = foreign object present) and its annotated objects."""

    image_path: Path
    label: int
    annotations: tuple[Annotation, ...] = ()

    @property
    def boxes(self) -> list[tuple[float, float, float, float]]:
        return [a.box for a in self.annotations]


def _format_number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _point_in_polygon(x: float, y: float, points: Sequence[tuple[float, float]]) -> bool:
    """Even–odd rule, with points on an edge counted inside (so a FROC point on the outline is a hit)."""
    inside = False
    n = len(points)
    for i in range(n):
        xa, ya = points[i]
        xb, yb = points[(i + 1) % n]
        # On the edge: collinear and within the segment's extent.
        cross = (xb - xa) * (y - ya) - (yb - ya) * (x - xa)
        if (
            abs(cross) <= 1e-9 * max(1.0, abs(xb - xa) + abs(yb - ya))
            and min(xa, xb) - 1e-9 <= x <= max(xa, xb) + 1e-9
            and min(ya, yb) - 1e-9 <= y <= max(ya, yb) + 1e-9
        ):
            return True
        if (ya > y) != (yb > y):
            x_cross = xa + (y - ya) * (xb - xa) / (yb - ya)
            if x < x_cross:
                inside = not inside
    return inside


def _parse_numbers(tokens: Sequence[str], where: str) -> list[float]:
    values = []
    for tok in tokens:
        try:
            v = float(tok)
        except ValueError:
            raise DatasetError(f"{where}: coordinate {tok!r} is not a number") from None
        if not math.isfinite(v):
            raise DatasetError(f"{where}: coordinate {tok!r} is not finite")
        values.append(v)
    return values


def parse_object_cxr_annotation(text: str, where: str) -> tuple[Annotation, ...]:
    """Parse an Object-CXR ``annotation`` field; ``where`` (``file line n``) prefixes any error."""
    objects = []
    for k, part in enumerate(p.strip() for p in text.split(";")):
        if not part:  # tolerate a trailing ';' or blank annotation
            continue
        tokens = part.split()
        here = f"{where}: object {k + 1} ({part[:40]!r})"
        try:
            kind = int(tokens[0])
        except ValueError:
            raise DatasetError(f"{here}: type {tokens[0]!r} is not 0, 1 or 2") from None
        if kind not in _KIND_NAMES:
            raise DatasetError(f"{here}: type {kind} is not 0 (rectangle), 1 (ellipse) or 2 (polygon)")
        values = _parse_numbers(tokens[1:], here)
        if len(values) % 2:
            raise DatasetError(f"{here}: odd number of coordinates ({len(values)})")
        points = tuple(zip(values[0::2], values[1::2]))
        if kind != POLYGON and len(points) != 2:
            article = "an" if kind == ELLIPSE else "a"
            raise DatasetError(
                f"{here}: {article} {_KIND_NAMES[kind]} needs 4 coordinates (two corners), got {len(values)}"
            )
        if kind == POLYGON and len(points) < 3:
            raise DatasetError(f"{here}: a polygon needs at least 3 vertices, got {len(points)}")
        objects.append(Annotation(kind, points))
    return tuple(objects)


def _parse_generic_boxes(text: str, where: str) -> tuple[Annotation, ...]:
    boxes = []
    for k, part in enumerate(p.strip() for p in text.split(";")):
        if not part:
            continue
        values = _parse_numbers(part.split(), f"{where}: box {k + 1}")
        if len(values) != 4:
            raise DatasetError(f"{where}: box {k + 1} ({part[:40]!r}) needs 4 numbers x1 y1 x2 y2, got {len(values)}")
        boxes.append(Annotation(RECTANGLE, ((values[0], values[1]), (values[2], values[3]))))
    return tuple(boxes)


def _parse_label(text: str, where: str, positive_class: str | None) -> int:
    value = text.strip()
    if positive_class is not None and value == positive_class:
        return 1
    low = value.lower()
    if low in POSITIVE_LABELS:
        return 1
    if low in NEGATIVE_LABELS:
        return 0
    if positive_class is not None and value:
        return 0  # any other class name is "not the positive class"
    raise DatasetError(
        f"{where}: label {value!r} is not 0/1 or a known class name "
        f"({', '.join(sorted(POSITIVE_LABELS | NEGATIVE_LABELS))}); pass positive_class= for others"
    )


@dataclass(frozen=True)
class PathPolicy:
    """Where a data set's image paths may point: under ``root`` once every symbolic link is resolved, never
    absolute or through ``..``, at most ``max_chars`` characters (the service's evaluation jobs; None: anywhere)."""

    root: Path
    max_chars: int


def _check_image_name(name: str, where: str, policy: PathPolicy) -> None:
    if len(name) > policy.max_chars:
        raise DatasetError(f"{where}: image path is {len(name)} characters long; the limit is {policy.max_chars}")
    if "\x00" in name:
        raise DatasetError(f"{where}: image path contains a NUL character")
    p = Path(name)
    if p.is_absolute():
        raise DatasetError(f"{where}: image {name!r} is an absolute path; paths must be relative to the data set")
    if ".." in p.parts:
        raise DatasetError(f"{where}: image {name!r} goes up with '..'; paths must stay inside the data set")


def _is_file(path: Path, where: str, name: str) -> bool:
    try:
        return path.is_file()
    except OSError as exc:  # ENAMETOOLONG, EACCES …: the row's fault, not the reader's
        raise DatasetError(f"{where}: image {name[:80]!r}: {exc.strerror or exc}") from None


def _resolve_image(
    name: str, image_root: Path, split: str, where: str, check_files: bool, policy: PathPolicy | None = None
) -> Path:
    if policy is not None:
        _check_image_name(name, where, policy)
    p = Path(name)
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = [image_root / split / p, image_root / p] if split else [image_root / p]
        if len(p.parts) > 1:  # "train/00012.png" is relative to ROOT first
            candidates.reverse()
    found = candidates[0] if not check_files else next((c for c in candidates if _is_file(c, where, name)), None)
    if found is None:
        raise DatasetError(f"{where}: image {name!r} not found (looked at {', '.join(str(c) for c in candidates)})")
    if policy is not None and not Path(os.path.realpath(found)).is_relative_to(os.path.realpath(policy.root)):
        raise DatasetError(f"{where}: image {name!r} is a symbolic link to a file outside the data folder")
    return found


def read_csv(
    csv_path: str | Path,
    image_root: str | Path | None = None,
    *,
    positive_class: str | None = None,
    check_files: bool = True,
    policy: PathPolicy | None = None,
) -> list[Sample]:
    """Read an Object-CXR or generic CSV (auto-detected by its header) into samples.

    Images are resolved against ``image_root`` (default: the CSV's folder), then ``image_root/<csv stem>/``
    — the Object-CXR layout keeps ``ROOT/dev.csv`` next to ``ROOT/dev/``. ``check_files`` makes a missing
    image an error at read time rather than half-way through training. ``policy`` confines every image path
    (an error names the file and line of the first row that leaves it).
    """
    csv_path = Path(csv_path)
    image_root = Path(image_root) if image_root is not None else csv_path.parent
    name = csv_path.name
    try:
        handle = open(csv_path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"{csv_path}: cannot open ({exc.strerror or exc})") from None
    samples: list[Sample] = []
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetError(f"{name} line 1: empty file, expected a header") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DatasetError(f"{name} line 1: {exc}") from None
        columns = [h.strip().lower() for h in header]
        if "annotation" in columns and ({"image_name", "image_path"} & set(columns)):
            layout = "object-cxr"
            image_col = columns.index("image_name" if "image_name" in columns else "image_path")
            ann_col = columns.index("annotation")
        elif "image" in columns and "label" in columns:
            layout = "generic"
            image_col, label_col = columns.index("image"), columns.index("label")
            boxes_col = columns.index("boxes") if "boxes" in columns else None
        else:
            raise DatasetError(
                f"{name} line 1: header {header!r} is neither Object-CXR "
                f"(image_name|image_path, annotation) nor generic (image, label, boxes)"
            )
        split = csv_path.stem
        try:
            for row in reader:
                line = reader.line_num
                where = f"{name} line {line}"
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) < len(header):
                    # Object-CXR writes no trailing comma for some negatives: a missing last annotation is empty.
                    if (layout == "object-cxr" and len(row) == len(header) - 1 and ann_col == len(header) - 1) or (
                        layout == "generic" and boxes_col == len(header) - 1 and len(row) == len(header) - 1
                    ):
                        row = [*row, ""]
                    else:
                        raise DatasetError(
                            f"{where}: expected {len(header)} columns ({', '.join(header)}), got {len(row)}"
                        )
                image_name = row[image_col].strip()
                if not image_name:
                    raise DatasetError(f"{where}: empty image name")
                path = _resolve_image(image_name, image_root, split, where, check_files, policy)
                if layout == "object-cxr":
                    annotations = parse_object_cxr_annotation(row[ann_col], where)
                    label = 1 if annotations else 0
                else:
                    label = _parse_label(row[label_col], where, positive_class)
                    annotations = _parse_generic_boxes(row[boxes_col], where) if boxes_col is not None else ()
                    if label == 0 and annotations:
                        raise DatasetError(f"{where}: a negative image (label {row[label_col]!r}) has boxes")
                samples.append(Sample(path, label, annotations))
        except csv.Error as exc:
            raise DatasetError(f"{name} line {reader.line_num}: {exc}") from None
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{name}: not UTF-8 text ({exc.reason})") from None
    return samples


def read_split(
    root: str | Path,
    split: str,
    *,
    positive_class: str | None = None,
    check_files: bool = True,
    policy: PathPolicy | None = None,
) -> list[Sample]:
    """``ROOT/<split>.csv`` with images under ``ROOT/<split>/`` or at the listed path relative to ROOT."""
    root = Path(root)
    csv_path = root / f"{split}.csv"
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: no such file (expected the Object-CXR layout ROOT/{split}.csv)")
    return read_csv(csv_path, root, positive_class=positive_class, check_files=check_files, policy=policy)


def load_gray(path: str | Path) -> npt.NDArray[np.float32]:
    """An image file as the model sees it: float32 [H, W] in [0, 1], MONOCHROME2 (dense is bright).

    This is :func:`models.imaging.decode_file`, the service's own decode path (DICOM Modality and VOI LUTs,
    MONOCHROME1 inversion, padding; PNG/JPEG luminance), so training, evaluation and ``/assess`` see the same
    array for the same file. A file that cannot be used raises :class:`DatasetError` naming it.
    """
    path = Path(path)
    try:
        return decode_file(path).pixels
    except ImageError as exc:
        if not path.exists():
            raise DatasetError(f"{path}: no such image file") from None
        raise DatasetError(f"{path}: cannot decode image ({exc.detail})") from None


def dataset_fingerprint(samples: Iterable[Sample]) -> str:
    """sha256 over every sample's image name (last two path parts), file size, label and annotations.

    Independent of where the data set lives on disk and cheap (stat, not read); two data sets with the same
    rows and same-sized files have the same fingerprint.
    """
    h = hashlib.sha256()
    for s in samples:
        name = "/".join(s.image_path.parts[-2:])
        try:
            size = os.stat(s.image_path).st_size
        except OSError:
            size = -1
        anns = ";".join(a.to_object_cxr() for a in s.annotations)
        h.update(f"{name}\t{size}\t{s.label}\t{anns}\n".encode())
    return h.hexdigest()
