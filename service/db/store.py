"""The store's engine and whether its schema is current.

The service starts even when the database is unreachable (the audit trail spools meanwhile); the schema is then
migrated by the first writer that reaches the database (``ensure_schema``), once.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine

from service.db.engine import describe_url, make_engine
from service.db.migrate import upgrade

log = logging.getLogger("normgate.db")


class StoreUnavailable(RuntimeError):
    """The database cannot be reached (or not migrated) right now."""


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.description = describe_url(url)
        self.engine: Engine = make_engine(url)
        self._migrated = False
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        """True once the schema has been brought to the newest revision by this process."""
        return self._migrated

    def ensure_schema(self) -> None:
        """Migrate to the newest revision unless done already; raises when the database cannot be reached."""
        if self._migrated:
            return
        with self._lock:
            if self._migrated:
                return
            revision = upgrade(self.engine)
            self._migrated = True
            log.info("store %s at schema revision %s", self.description, revision)

    def require(self) -> Engine:
        """The engine of a migrated store, or :class:`StoreUnavailable`."""
        if not self._migrated:
            try:
                self.ensure_schema()
            except Exception as exc:
                raise StoreUnavailable(f"the store cannot be reached ({type(exc).__name__})") from exc
        return self.engine

    def dispose(self) -> None:
        self.engine.dispose()
