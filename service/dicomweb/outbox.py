"""The durable outbox: result sets waiting for delivery, on disk before anybody is told they exist.

Every result set (the SC, SEG and SR of one image) that must reach an archive is written here first, in one
transaction, and removed only after the archive has answered for it. A sender (``OutboxSender``) delivers the
oldest due set, retries failures with capped exponential backoff and gives a set up when it is older than
``max_age_s``. Because the rows outlive the process, a restart (or ``kill -9``) in the middle of an outage loses
nothing: the next process picks the sets up where the last one left them.

Delivery is at least once — a set whose answer was lost (the process died after the archive stored it) is sent
again — and exactly once from the archive's point of view, because the result instances' UIDs are derived from
(original, model, method) (``service.dicomweb.results.ResultUids``): storing the same SOP Instance again is a
duplicate the archive keeps once.

Storage is behind the small ``Outbox`` protocol. ``SqliteOutbox`` is a SQLite file in WAL mode under
``NORMGATE_STATE_DIR`` (``synchronous=FULL``: a committed set survives a power cut, not only a crash). Another
store (the audit database) can take its place by implementing the same seven methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

from service.config import Settings
from service.observability.metrics import ServiceMetrics

log = logging.getLogger("normgate.outbox")

__all__ = ["OUTBOX_FILE", "Deliver", "Delivery", "Outbox", "OutboxItem", "OutboxSender", "SqliteOutbox", "open_outbox"]

OUTBOX_FILE = "outbox.sqlite3"  # under NORMGATE_STATE_DIR


@dataclass(frozen=True)
class OutboxItem:
    id: int
    channel: str  # which sender delivers it: "dicomweb" (STOW-RS push) or "dimse" (C-STORE)
    created: float  # wall-clock seconds (time.time) when the set was added: ages survive restarts
    attempts: int  # failed attempts so far
    next_attempt: float  # wall-clock seconds
    sop_instance_uids: list[str]
    instances: list[bytes]  # Part 10 files, in order


class Outbox(Protocol):
    def add(self, channel: str, sop_instance_uids: list[str], instances: list[bytes], now: float) -> bool:
        """Store a set durably; False when the outbox is full. A set already pending is not added twice."""
        ...

    def next_due(self, channel: str, now: float) -> OutboxItem | None:
        """The due set to try next (earliest next attempt, then oldest), or None."""
        ...

    def next_attempt_time(self, channel: str) -> float | None: ...

    def remove(self, item_id: int) -> None: ...

    def reschedule(self, item_id: int, attempts: int, next_attempt: float, error: str) -> None: ...

    def stats(self, channel: str) -> tuple[int, float | None]:
        """(pending sets, created time of the oldest or None)."""
        ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox_set (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT,
    UNIQUE (channel, dedupe_key)
);
CREATE INDEX IF NOT EXISTS outbox_set_due ON outbox_set (channel, next_attempt, id);
CREATE TABLE IF NOT EXISTS outbox_instance (
    set_id INTEGER NOT NULL REFERENCES outbox_set (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    part10 BLOB NOT NULL,
    PRIMARY KEY (set_id, position)
);
"""


class SqliteOutbox:
    """The outbox as one SQLite file (WAL). Thread-safe: one connection behind a lock, so the sender can run
    its queries in worker threads (``asyncio.to_thread``) off the event loop."""

    def __init__(self, path: Path, max_sets: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_sets = max_sets
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def add(self, channel: str, sop_instance_uids: list[str], instances: list[bytes], now: float) -> bool:
        key = ",".join(sop_instance_uids)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                exists = self._db.execute(
                    "SELECT 1 FROM outbox_set WHERE channel = ? AND dedupe_key = ?", (channel, key)
                ).fetchone()
                if exists:
                    self._db.execute("COMMIT")
                    return True
                (pending,) = self._db.execute("SELECT COUNT(*) FROM outbox_set").fetchone()
                if pending >= self.max_sets:
                    self._db.execute("COMMIT")
                    return False
                cursor = self._db.execute(
                    "INSERT INTO outbox_set (channel, dedupe_key, created, next_attempt) VALUES (?, ?, ?, ?)",
                    (channel, key, now, now),
                )
                self._db.executemany(
                    "INSERT INTO outbox_instance (set_id, position, sop_instance_uid, part10) VALUES (?, ?, ?, ?)",
                    [
                        (cursor.lastrowid, position, uid, part10)
                        for position, (uid, part10) in enumerate(zip(sop_instance_uids, instances, strict=True))
                    ],
                )
                self._db.execute("COMMIT")
                return True
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def next_due(self, channel: str, now: float) -> OutboxItem | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, created, attempts, next_attempt FROM outbox_set WHERE channel = ? AND next_attempt <= ? "
                "ORDER BY next_attempt, id LIMIT 1",
                (channel, now),
            ).fetchone()
            if row is None:
                return None
            parts = self._db.execute(
                "SELECT sop_instance_uid, part10 FROM outbox_instance WHERE set_id = ? ORDER BY position", (row[0],)
            ).fetchall()
        return OutboxItem(
            id=row[0],
            channel=channel,
            created=row[1],
            attempts=row[2],
            next_attempt=row[3],
            sop_instance_uids=[p[0] for p in parts],
            instances=[bytes(p[1]) for p in parts],
        )

    def next_attempt_time(self, channel: str) -> float | None:
        with self._lock:
            (value,) = self._db.execute(
                "SELECT MIN(next_attempt) FROM outbox_set WHERE channel = ?", (channel,)
            ).fetchone()
        return float(value) if value is not None else None

    def remove(self, item_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox_set WHERE id = ?", (item_id,))

    def reschedule(self, item_id: int, attempts: int, next_attempt: float, error: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE outbox_set SET attempts = ?, next_attempt = ?, last_error = ? WHERE id = ?",
                (attempts, next_attempt, error[:200], item_id),
            )

    def stats(self, channel: str) -> tuple[int, float | None]:
        with self._lock:
            count, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(created) FROM outbox_set WHERE channel = ?", (channel,)
            ).fetchone()
        return int(count), (float(oldest) if oldest is not None else None)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_outbox(settings: Settings) -> SqliteOutbox:
    """The outbox of this process: ``NORMGATE_STATE_DIR/outbox.sqlite3``, at most NORMGATE_DICOMWEB_PUSH_QUEUE_SIZE
    pending sets (both channels together)."""
    return SqliteOutbox(settings.state_dir / OUTBOX_FILE, max_sets=settings.dicomweb_push_queue_size)


class Delivery(Enum):
    """What one delivery attempt came to."""

    STORED = "pushed"  # the archive stored every instance (or already had it)
    PARTIAL = "partial"  # the archive answered, but refused some instances: final, logged
    REFUSED = "failed"  # a final refusal (400, 401, 403, 409, a C-STORE failure status): not retried
    RETRY = "retry"  # may succeed later: connection error, timeout, 408, 429, 5xx, association rejected


Deliver = Callable[[OutboxItem], Awaitable[tuple[Delivery, str]]]


class OutboxSender:
    """Delivers one channel's sets, oldest due first, one at a time.

    After a failed attempt the set waits ``min(backoff_max_s, backoff_s · 2^(attempts-1))`` before its own next
    try, and the whole sender pauses as long for its consecutive failures (an archive that is down is not hit
    once per pending set); a success resets the pause. A set older than ``max_age_s`` is given up (counted as
    ``expired`` and logged with its UIDs). ``deliver`` answers one attempt with a ``Delivery`` and a reason.
    """

    def __init__(
        self,
        outbox: Outbox,
        channel: str,
        deliver: Deliver,
        metrics: ServiceMetrics,
        *,
        backoff_s: float,
        backoff_max_s: float,
        max_age_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.channel = channel
        self.deliver = deliver
        self.metrics = metrics
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.max_age_s = max_age_s
        self.clock = clock
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pending = 0
        self._oldest: float | None = None

    # -- lifecycle (event loop) ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._refresh_stats()
        self.metrics.watch_push_backlog(self.channel, self._depth, self._oldest_age)
        if self._pending:
            log.info("%s outbox: %d result sets pending from an earlier run", self.channel, self._pending)
        self._task = asyncio.create_task(self._run(), name=f"normgate-outbox-{self.channel}")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after the attempt in progress (at most ``timeout_s``); what is pending stays in the outbox."""
        if self._task is None:
            return
        self._stopping.set()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=timeout_s)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        if self._pending:
            log.info("%s outbox: %d result sets left for the next start", self.channel, self._pending)

    # -- producers -------------------------------------------------------------------------------------------
    async def submit(self, sop_instance_uids: list[str], instances: list[bytes]) -> bool:
        """Store a set durably (False: the outbox is full, the set is dropped and counted). Never waits for
        the archive."""
        added = await asyncio.to_thread(self.outbox.add, self.channel, sop_instance_uids, instances, self.clock())
        if not added:
            self.metrics.push_outcomes.labels(self.channel, "dropped").inc()
            log.warning("%s outbox full: dropped results %s", self.channel, ", ".join(sop_instance_uids))
            return False
        await self._refresh_stats()
        self._wake.set()
        return True

    # -- gauges ----------------------------------------------------------------------------------------------
    def _depth(self) -> float:
        return float(self._pending)

    def _oldest_age(self) -> float:
        return max(0.0, self.clock() - self._oldest) if self._oldest is not None else 0.0

    async def _refresh_stats(self) -> None:
        self._pending, self._oldest = await asyncio.to_thread(self.outbox.stats, self.channel)

    def backoff(self, failures: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** max(0, failures - 1)))

    # -- the sender ------------------------------------------------------------------------------------------
    async def _sleep(self, seconds: float, wake_early: bool) -> None:
        """Sleep ``seconds`` or until stopping (or, with ``wake_early``, until a new set arrives)."""
        self._wake.clear()
        event = self._wake if wake_early else self._stopping
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=max(0.0, seconds))

    async def _run(self) -> None:
        consecutive_failures = 0
        while not self._stopping.is_set():
            now = self.clock()
            item = await asyncio.to_thread(self.outbox.next_due, self.channel, now)
            if item is None:
                upcoming = await asyncio.to_thread(self.outbox.next_attempt_time, self.channel)
                await self._sleep(60.0 if upcoming is None else min(60.0, upcoming - now), wake_early=True)
                continue
            uids = ", ".join(item.sop_instance_uids)
            if now - item.created > self.max_age_s:
                await asyncio.to_thread(self.outbox.remove, item.id)
                self.metrics.push_outcomes.labels(self.channel, "expired").inc()
                log.error(
                    "%s outbox: gave up results %s after %d attempts over %.0f s (max age %.0f s)",
                    self.channel,
                    uids,
                    item.attempts,
                    now - item.created,
                    self.max_age_s,
                )
                await self._refresh_stats()
                continue
            try:
                outcome, reason = await self.deliver(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in delivery must not kill the sender: retry like a failure
                outcome, reason = Delivery.RETRY, f"{type(exc).__name__} while delivering"
            if outcome is Delivery.RETRY:
                attempts = item.attempts + 1
                consecutive_failures += 1
                delay = self.backoff(attempts)
                await asyncio.to_thread(self.outbox.reschedule, item.id, attempts, self.clock() + delay, reason)
                self.metrics.push_retries.labels(self.channel).inc()
                pause = self.backoff(consecutive_failures)
                log.warning(
                    "%s outbox: results %s not delivered (%s), attempt %d; retry in %.2f s",
                    self.channel,
                    uids,
                    reason,
                    attempts,
                    delay,
                )
                await self._sleep(pause, wake_early=False)
                continue
            consecutive_failures = 0
            await asyncio.to_thread(self.outbox.remove, item.id)
            self.metrics.push_outcomes.labels(self.channel, outcome.value).inc()
            if outcome is Delivery.STORED:
                log.info("%s outbox: results %s delivered", self.channel, uids)
            else:
                log.error("%s outbox: results %s %s: %s; not retried", self.channel, uids, outcome.value, reason)
            await self._refresh_stats()
