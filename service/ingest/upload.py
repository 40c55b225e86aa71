"""An upload as the ingest layer takes it: the body bytes and the media type the sender declared."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Upload:
    body: bytes
    content_type: str | None  # media type without parameters, lower case; None when not given
