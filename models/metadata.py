"""The model-metadata schema: what ``model.json`` in a checkpoint folder says, written by training and read,
validated and shown (``GET /models``) by everything else.

One pydantic model, :class:`ModelMetadata`, is the whole contract (docs/formats.md, "model.json"). Unknown fields
are refused, so a typo such as ``threshhold`` fails loudly instead of leaving the default in force. Provenance
(:class:`TrainingRecord`) is structured and machine-independent: data sets are named by their fingerprints and
sizes, commands keep paths relative to the working directory, and no absolute path of the training machine is
ever stored.

Optional blocks belong to features that not every checkpoint has: ``serves`` (routing DICOM by its header),
``calibration`` (temperature scaling and the site's operating point), ``ood`` (the out-of-distribution check),
``results`` (how result DICOM series are named), ``tau_rel`` (the Pointing Game tolerance of the task).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.architectures import SUPPORTED_ARCHS, default_normgrad_layers

__all__ = [
    "Calibration",
    "DatasetRecord",
    "MetadataError",
    "ModelMetadata",
    "OodCheck",
    "ResultSeries",
    "Serves",
    "TrainingRecord",
    "describe_validation_error",
    "portable_command",
]

# The papers' Pointing Game tolerance: 15 px on a 600 px grid (Ozer et al. 2021, 2023, Object-CXR).
CHEST_TAU_REL = 15 / 600
# The 2023 paper's cardiac MR task (LVOT on 4-chamber cines) scores 15 px on its 224 px grid.
CARDIAC_TAU_REL = 15 / 224


class MetadataError(ValueError):
    """``model.json`` that does not satisfy the schema; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True)


class DatasetRecord(_Strict):
    """One data split a model was trained or measured on, identified by content, not by where it lay."""

    split: str = Field(description="train, dev or test.")
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the split's CSV rows and file sizes.")
    size: int = Field(ge=0, description="Images in the split.")
    positives: int = Field(ge=0, description="Images with the positive class.")


class TrainingRecord(_Strict):
    """How the weights came to be. Every field is optional: converted or hand-made checkpoints know less."""

    data: list[DatasetRecord] = Field(default_factory=list)
    commands: list[str] = Field(
        default_factory=list, description="Each command that trained these weights, in order (a resume adds one)."
    )
    seconds: float | None = Field(None, ge=0, description="Training wall time, all commands together.")
    seed: int | None = None
    epochs: int | None = Field(None, ge=0)
    best_epoch: int | None = Field(None, ge=0)
    pretrained: str | None = Field(None, description="File name of the weights training started from, if any.")
    amp: str | None = None
    device: str | None = None
    notes: str = Field("", description="Anything else a reader should know, in a sentence.")

    @field_validator("commands")
    @classmethod
    def _no_absolute_paths(cls, commands: list[str]) -> list[str]:
        for command in commands:
            if _ABSOLUTE_PATH.search(command):
                raise ValueError(f"a command names an absolute path ({command!r}); store it relative")
        return commands

    @field_validator("pretrained")
    @classmethod
    def _file_name_only(cls, value: str | None) -> str | None:
        if value is not None and ("/" in value or "\\" in value):
            raise ValueError(f"pretrained must be a file name, not a path: {value!r}")
        return value


class Serves(_Strict):
    """Which DICOM instances this model assesses when no ``?model=`` is given: case-insensitive regular
    expressions matched against the whole attribute value (``re.fullmatch``). A checkpoint without ``serves``
    only takes PNG/JPEG and explicit ``?model=`` requests."""

    modality: str = Field(description="Modality (0008,0060), e.g. 'CR|DX|DR' or 'MR'.")
    body_part_examined: str | None = Field(None, description="Body Part Examined (0018,0015), e.g. 'CHEST'.")
    series_description: str | None = Field(None, description="Series Description (0008,103E) pattern.")
    view_position: str | None = Field(None, description="View Position (0018,5101) pattern, e.g. 'PA|AP'.")

    @field_validator("modality", "body_part_examined", "series_description", "view_position")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"not a regular expression ({exc}): {pattern!r}") from None
        return pattern


class Calibration(_Strict):
    """Temperature scaling of the logits and the operating point chosen on a labelled set."""

    version: str = Field(description="Names this calibration in answers and audit records.")
    temperature: float = Field(gt=0, description="Logits are divided by this before the softmax.")
    threshold: float = Field(ge=0, le=1, description="Decision threshold on the calibrated probability.")
    target: str = Field(description="What the threshold was chosen for, e.g. 'sensitivity 0.95'.")
    fitted_on: str = Field(description="The labelled set: 'dev split' or a verdict export, with its size.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="ECE, Brier before/after, with CIs.")
    earlier_temperatures: dict[str, float] = Field(
        default_factory=dict,
        description="Temperature of each earlier calibration version of these weights, so probabilities recorded "
        "under it (the audit export) can be turned back into logits when the site calibrates again.",
    )

    @field_validator("earlier_temperatures")
    @classmethod
    def _positive_temperatures(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {version: t for version, t in value.items() if not t > 0}
        if bad:
            raise ValueError(f"temperatures must be positive, got {bad!r}")
        return value


class OodCheck(_Strict):
    """The out-of-distribution score on the penultimate features, fitted on the training split (models.ood)."""

    method: Literal["mahalanobis"] = Field(
        "mahalanobis", description="Score: Mahalanobis distance to the nearest class mean of the training features."
    )
    file: str = Field("ood.safetensors", description="Statistics (means, precision) beside model.safetensors.")
    layer: str = Field("avgpool", description="Module whose output are the features (the pooled penultimate layer).")
    threshold: float = Field(gt=0, description="Scores above this are out of distribution.")
    target_pass_rate: float = Field(0.99, gt=0, le=1, description="Share of the dev split the threshold must pass.")
    dev_pass_rate: float = Field(ge=0, le=1, description="Share of the dev split at or below the threshold.")
    test_pass_rate: float | None = Field(
        None, ge=0, le=1, description="Share of the test split at or below it (1 − the false-unassessable rate)."
    )
    shrinkage: float | None = Field(None, ge=0, le=1, description="Ledoit–Wolf shrinkage of the covariance.")
    train_size: int | None = Field(None, ge=1, description="Training images the statistics were fitted on.")
    dev_size: int | None = Field(None, ge=1, description="Dev images the threshold was chosen on.")
    test_size: int | None = Field(None, ge=1, description="Test images test_pass_rate was measured on.")
    data: list[DatasetRecord] = Field(
        default_factory=list, description="The train, dev and test splits used, by fingerprint (as in trained_on)."
    )

    @field_validator("file")
    @classmethod
    def _file_name_only(cls, value: str) -> str:
        if "/" in value or "\\" in value or value in ("", ".", ".."):
            raise ValueError(f"must be a file name inside the checkpoint folder, not a path: {value!r}")
        return value


class ResultSeries(_Strict):
    """How the result DICOM objects of this model are filed beside the source study."""

    series_number: int = Field(ge=1, le=2_147_483_647)
    series_description: str = Field(max_length=64)


class ModelMetadata(_Strict):
    """``model.json``: the checkpoint's identity, input, classes, decision threshold and provenance."""

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    arch: str
    input_size: list[int] = Field(description="[height, width] of the model input grid.")
    mean: list[float] = Field(default_factory=lambda: [0.5, 0.5, 0.5], min_length=3, max_length=3)
    std: list[float] = Field(default_factory=lambda: [0.25, 0.25, 0.25], min_length=3, max_length=3)
    classes: list[str] = Field(default_factory=lambda: ["no_foreign_object", "foreign_object"])
    positive_class: str = "foreign_object"
    threshold: float = Field(0.5, ge=0, le=1, description="Decision threshold on P(positive class).")
    normgrad_layers: list[str] = Field(default_factory=list, description="Hooked layers; default: the arch's.")
    tau_rel: float = Field(
        CHEST_TAU_REL, gt=0, le=1, description="Pointing Game tolerance as a fraction of the grid's side."
    )
    trained_on: TrainingRecord = Field(default_factory=TrainingRecord)
    metrics: dict[str, Any] = Field(default_factory=dict, description="Held-out numbers measured on these weights.")
    serves: Serves | None = None
    calibration: Calibration | None = None
    ood: OodCheck | None = None
    results: ResultSeries | None = None

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        if arch not in SUPPORTED_ARCHS:
            raise ValueError(f"unknown arch {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}")
        return arch

    @field_validator("input_size", mode="before")
    @classmethod
    def _square_from_int(cls, value: object) -> object:
        return [value, value] if isinstance(value, int) else value

    @field_validator("input_size")
    @classmethod
    def _grid(cls, value: list[int]) -> list[int]:
        if len(value) != 2 or not all(32 <= s <= 4096 for s in value):
            raise ValueError(f"must be [height, width] in 32..4096, got {value!r}")
        return value

    @field_validator("std")
    @classmethod
    def _positive_std(cls, value: list[float]) -> list[float]:
        if any(s <= 0 for s in value):
            raise ValueError(f"std values must be positive, got {value!r}")
        return value

    @field_validator("classes")
    @classmethod
    def _two_classes(cls, value: list[str]) -> list[str]:
        if len(value) != 2 or len(set(value)) != 2:
            raise ValueError(f"must be two distinct names, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelMetadata:
        if self.positive_class not in self.classes:
            raise ValueError(f"positive_class {self.positive_class!r} is not one of {self.classes!r}")
        if not self.normgrad_layers:
            # Through __dict__: validate_assignment would re-run this validator on assignment.
            self.__dict__["normgrad_layers"] = default_normgrad_layers(self.arch)
        return self

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive_class)

    @property
    def negative_class(self) -> str:
        return next(c for c in self.classes if c != self.positive_class)

    @property
    def decision_threshold(self) -> float:
        """The threshold decisions use: the calibration's operating point when calibrated, else ``threshold``."""
        return self.calibration.threshold if self.calibration is not None else self.threshold

    @property
    def temperature(self) -> float:
        """Logits are divided by this before the softmax (temperature scaling; 1 when uncalibrated)."""
        return self.calibration.temperature if self.calibration is not None else 1.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``model.json`` (optional blocks that are unset are left out)."""
        data = self.model_dump(mode="json")
        for block in ("serves", "calibration", "ood", "results"):
            if data.get(block) is None:
                data.pop(block, None)
        return data

    @classmethod
    def from_dict(cls, data: object, source: str = "model.json") -> ModelMetadata:
        """Validate a parsed ``model.json``; a failure is one :class:`MetadataError` line naming the field."""
        if not isinstance(data, dict):
            raise MetadataError(f"{source}: expected a JSON object")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise MetadataError(f"{source}: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem of a pydantic error as ``field a.b: message`` (one line, no input echoed)."""
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "(the object)"
    message = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        message = "missing required field"
    elif first.get("type") == "extra_forbidden":
        message = "unknown field (not in the model.json schema, docs/formats.md)"
    more = len(exc.errors()) - 1
    return f"field {where}: {message}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


_ABSOLUTE_PATH = re.compile(r"(^|[\s=])(/[^\s]+|[A-Za-z]:\\[^\s]*)")


def portable_command(argv: list[str], cwd: str | Path | None = None) -> str:
    """A command line to store in provenance: absolute paths inside ``cwd`` become relative, others keep only
    their last component (``…/name``), so no record names the training machine's folders."""
    base = Path(cwd or os.getcwd()).resolve()
    words = []
    for word in argv:
        key, sep, value = word.partition("=") if word.startswith("--") and "=" in word else ("", "", word)
        if value.startswith("/"):
            path = Path(value)
            try:
                value = str(path.resolve().relative_to(base))
            except ValueError:
                value = f"…/{path.name}"
        words.append(f"{key}{sep}{value}" if sep else value)
    return shlex.join(words)
