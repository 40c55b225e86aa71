"""Result instances (Secondary Capture, SR) in the store, so that whichever replica a WADO-RS request reaches
can answer it. ``service.dicomweb.stow.ResultStore`` keeps its memory cache in front and calls these (in a
thread) through its ``SharedResults`` interface; NORMGATE_DICOMWEB_RESULT_RETENTION_HOURS bounds how long they
stay (``service.db.audit.retention_loop`` deletes older ones)."""

from __future__ import annotations

from datetime import UTC, datetime

from service.db import queries
from service.db.store import Store


class StoreResults:
    def __init__(self, store: Store) -> None:
        self.store = store

    def save(self, study_uid: str, series_uid: str, sop_uid: str, part10: bytes) -> None:
        queries.save_result(self.store.require(), study_uid, series_uid, sop_uid, part10, datetime.now(UTC))

    def load(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes | None:
        return queries.load_result(self.store.require(), study_uid, series_uid, sop_uid)
