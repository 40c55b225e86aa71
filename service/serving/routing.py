"""Which model assesses a DICOM instance when the request names none: the ``serves`` blocks of ``model.json``.

The rules (docs/integration.md, "Routing"):

* A model can take an instance only if its ``serves`` block exists and each of its patterns (case-insensitive
  regular expressions, ``re.fullmatch``) matches the instance's value of that attribute: Modality (0008,0060),
  Body Part Examined (0018,0015), Series Description (0008,103E), View Position (0018,5101).
* An attribute the instance does not carry (absent or empty) neither rules a model out nor counts for it:
  Body Part Examined is optional in the General Series module and often left empty by CR readers, so a CR/DX
  instance without it still reaches the chest model (whose out-of-distribution check then judges the pixels).
  A value that is present and does not match rules the model out (a DX of the HAND is no chest image).
  Modality is required: an instance without one is routed nowhere.
* The most specific model wins: the one whose patterns matched the most attributes; a tie goes to the first
  model name in sorted order.
* A model without ``serves`` is never chosen by header: it takes PNG/JPEG (as the default model) and requests
  that name it with ``?model=``.

No model for an instance means the answer ``unassessable`` with reason ``unsupported_modality``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from models.imaging import DecodedImage
from models.metadata import ModelMetadata, Serves

__all__ = ["ROUTED_ATTRIBUTES", "InstanceAttributes", "match_strength", "route"]

# The header attributes a serves block may name, in the order they are documented.
ROUTED_ATTRIBUTES = ("modality", "body_part_examined", "series_description", "view_position")


@dataclass(frozen=True)
class InstanceAttributes:
    """The routing attributes of one DICOM instance, stripped; None when absent or empty."""

    modality: str | None = None
    body_part_examined: str | None = None
    series_description: str | None = None
    view_position: str | None = None

    @classmethod
    def of(cls, decoded: DecodedImage) -> InstanceAttributes:
        return cls(
            modality=decoded.modality,
            body_part_examined=decoded.body_part_examined,
            series_description=decoded.series_description,
            view_position=decoded.view_position,
        )


def match_strength(serves: Serves, attributes: InstanceAttributes) -> int | None:
    """How many of the instance's attributes the block's patterns matched, or None when it rules it out."""
    if not attributes.modality:
        return None
    matched = 0
    for name in ROUTED_ATTRIBUTES:
        pattern: str | None = getattr(serves, name)
        value: str | None = getattr(attributes, name)
        if pattern is None or not value:
            continue
        if re.fullmatch(pattern, value, re.IGNORECASE) is None:
            return None
        matched += 1
    return matched


def route(models: Mapping[str, ModelMetadata | None], attributes: InstanceAttributes) -> str | None:
    """The name of the model that serves the instance (module docstring), or None when none does."""
    best: tuple[int, str] | None = None
    for name in sorted(models):
        meta = models[name]
        if meta is None or meta.serves is None:
            continue
        strength = match_strength(meta.serves, attributes)
        if strength is not None and (best is None or strength > best[0]):
            best = (strength, name)
    return best[1] if best is not None else None
