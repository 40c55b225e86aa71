"""The audit trail's writer: every decision record reaches the store without /assess ever waiting for it.

* **Write-behind buffer.** The decision listener (on the event loop) only puts the record into a bounded
  in-memory queue. One writer thread takes what has queued (up to ``BATCH`` records) and writes it in one
  transaction, so a burst costs one commit, not one per decision.
* **Spool.** When the database cannot be reached, the batch is appended to an append-only JSON-lines file in
  NORMGATE_STATE_DIR (flushed and fsync'd). From then on every new record goes behind it in the same file, so
  order is kept; the writer retries the database with a growing pause (at most ``RETRY_MAX_S``) and, once it
  answers, replays the file oldest first, in chunks, remembering how far it got (``<spool>.offset``), then empties
  it. A record written twice (a replay interrupted by a crash, a commit whose acknowledgement was lost) is kept
  once: ``assessment_id`` is unique and inserts skip duplicates. A full buffer (the writer stuck on a hanging
  database) also sends records straight to the spool. ``normgate_audit_spool_depth`` is the backlog.
* **Poison rows.** A row the database refuses for its content (not for being down) would block the spool
  forever; it is written to ``<spool>.rejected`` with a log line instead, and the rest goes on.
* **Retention.** ``retention_loop`` deletes records older than NORMGATE_AUDIT_RETENTION_DAYS (verdicts with
  them) and result instances older than NORMGATE_DICOMWEB_RESULT_RETENTION_HOURS, hourly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import exc as sa_exc

from service.db import queries
from service.db.schema import audit_records
from service.db.store import Store
from service.serving.decisions import DecisionRecord

log = logging.getLogger("normgate.audit")

BATCH = 500  # records per transaction, for new records and for each replayed chunk
RETRY_MIN_S = 0.25
RETRY_MAX_S = 5.0
SPOOL_FILE = "audit-spool.jsonl"
_TIME_FIELDS = frozenset({"time"})
# Column widths, so an over-long value (a client address, a model name) is cut instead of refused.
_WIDTHS: dict[str, int] = {
    c.name: int(getattr(c.type, "length", 0))
    for c in audit_records.columns
    if getattr(c.type, "length", None) is not None and c.name in {f.name for f in fields(DecisionRecord)}
}


def _is_outage(exc: BaseException) -> bool:
    """True when the database could not be reached or dropped the connection (retry later), False when it
    refused the data itself (retrying the same rows would fail again)."""
    if isinstance(exc, sa_exc.DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(
            exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.InternalError)
        )
    return isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError, OSError, sa_exc.ResourceClosedError))


def row_of(record: DecisionRecord) -> dict[str, Any]:
    row = queries.record_row(record)
    for name, width in _WIDTHS.items():
        value = row.get(name)
        if isinstance(value, str) and len(value) > width:
            row[name] = value[:width]
    return row


def _to_json(row: Mapping[str, Any]) -> str:
    return json.dumps({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()})


def _from_json(line: bytes) -> dict[str, Any]:
    row: dict[str, Any] = json.loads(line)
    if not isinstance(row, dict) or "assessment_id" not in row:
        raise ValueError("not an audit row")
    for name in _TIME_FIELDS:
        row[name] = datetime.fromisoformat(row[name])
    return row


class Spool:
    """Audit rows waiting for the database: an append-only JSON-lines file and how far it has been replayed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset_path = path.with_name(path.name + ".offset")
        self.rejected_path = path.with_name(path.name + ".rejected")
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.offset = self._read_offset()
        self._drop_partial_tail()
        self.depth = self._count_from(self.offset)
        if self.depth:
            log.warning(
                "audit spool %s holds %d records from an earlier run; they are replayed first", path, self.depth
            )

    def _read_offset(self) -> int:
        try:
            return max(0, int(self.offset_path.read_text().strip() or 0))
        except (OSError, ValueError):
            return 0

    def _drop_partial_tail(self) -> None:
        """A line cut off by a crash would merge with the next append: cut it away (it was never acknowledged)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            self.offset = 0
            return
        if size == 0:
            return
        with open(self.path, "rb+") as handle:
            data = handle.read()
            end = data.rfind(b"\n") + 1
            if end < size:
                log.warning("audit spool %s ends in a partial line (%d bytes); dropped", self.path, size - end)
                handle.truncate(end)
        self.offset = min(self.offset, end)

    def _count_from(self, offset: int) -> int:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(offset)
                return sum(1 for line in handle if line.strip())
        except FileNotFoundError:
            return 0

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        data = "".join(_to_json(row) + "\n" for row in rows).encode()
        with self._lock:
            with open(self.path, "ab") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            self.depth += len(rows)

    def read(self, limit: int) -> tuple[list[bytes], int]:
        """Up to ``limit`` lines after the replayed offset, and the offset just past them."""
        with self._lock:
            try:
                handle = open(self.path, "rb")
            except FileNotFoundError:
                return [], self.offset
            with handle:
                handle.seek(self.offset)
                lines: list[bytes] = []
                end = self.offset
                while len(lines) < limit:
                    line = handle.readline()
                    if not line.endswith(b"\n"):
                        break
                    end += len(line)
                    if line.strip():
                        lines.append(line)
            return lines, end

    def commit(self, end: int, count: int) -> None:
        """Lines up to ``end`` are in the database: advance, and empty the file once all of it is."""
        with self._lock:
            self.offset = end
            self.depth = max(0, self.depth - count)
            size = self.path.stat().st_size if self.path.exists() else 0
            if end >= size:
                with open(self.path, "wb"):
                    pass
                self.offset = 0
                self.depth = 0
                self.offset_path.unlink(missing_ok=True)
            else:
                tmp = self.offset_path.with_name(self.offset_path.name + ".tmp")
                tmp.write_text(str(end))
                os.replace(tmp, self.offset_path)

    def reject(self, line: bytes, why: str) -> None:
        log.error("audit spool: a record the database refuses (%s) moved to %s", why, self.rejected_path)
        with open(self.rejected_path, "ab") as handle:
            handle.write(line if line.endswith(b"\n") else line + b"\n")
            handle.flush()
            os.fsync(handle.fileno())


class AuditTrail:
    """The decision listener and its writer thread (module docstring)."""

    def __init__(
        self,
        store: Store,
        spool_path: Path,
        buffer_size: int,
        *,
        retry_max_s: float = RETRY_MAX_S,
        batch: int = BATCH,
    ) -> None:
        self.store = store
        self.spool = Spool(spool_path)
        self.retry_max_s = retry_max_s
        self.batch = batch
        self._queue: queue.Queue[DecisionRecord] = queue.Queue(buffer_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress = threading.Condition()
        self._submitted = 0  # records handed to the trail (event loop thread)
        self._settled = 0  # records in the database or the spool
        self._retry_at = 0.0
        self._pause = 0.0
        self.database_reachable = False

    # -- the listener (event loop) ------------------------------------------------------------------------------

    def record(self, record: DecisionRecord) -> None:
        """Queue one decision; never blocks. A full buffer sends it straight to the spool."""
        with self._progress:
            self._submitted += 1
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            log.warning(
                "audit buffer full (%d records): %s goes to the spool", self._queue.maxsize, record.assessment_id
            )
            self.spool.append([row_of(record)])
            self._settle(1)

    @property
    def buffered(self) -> int:
        return self._queue.qsize()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every record handed over so far is in the database or the spool (True), or the timeout."""
        with self._progress:
            target = self._submitted
            return self._progress.wait_for(lambda: self._settled >= target, timeout_s)

    def _settle(self, count: int) -> None:
        with self._progress:
            self._settled += count
            self._progress.notify_all()

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="normgate-audit-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write (or spool) what is queued, then end the writer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error(
                    "audit writer did not finish within %.0f s; %d records left in memory", timeout_s, self.buffered
                )

    # -- the writer thread --------------------------------------------------------------------------------------

    def _take(self, wait_s: float) -> list[DecisionRecord]:
        try:
            first = self._queue.get(timeout=wait_s) if wait_s > 0 else self._queue.get_nowait()
        except queue.Empty:
            return []
        taken = [first]
        while len(taken) < self.batch:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return taken

    def _run(self) -> None:
        while True:
            if self._backlog() and time.monotonic() >= self._retry_at:
                self._catch_up()
            # With a backlog the database answers for, keep replaying between batches; else wait for records
            # (a quarter second at most, to notice stop() and the next retry).
            replaying = self._backlog() and time.monotonic() >= self._retry_at
            taken = self._take(0.0 if replaying else 0.25)
            if taken:
                self._write(taken)
            if self._stop.is_set() and self._queue.empty():
                return

    def _backlog(self) -> bool:
        return self.spool.depth > 0 or not self.store.ready

    def _down(self, exc: BaseException) -> None:
        if self.database_reachable or self._pause == 0.0:
            log.warning(
                "audit store %s unreachable (%s); records spool to %s",
                self.store.description,
                type(exc).__name__,
                self.spool.path,
            )
        self.database_reachable = False
        self._pause = min(self.retry_max_s, max(RETRY_MIN_S, self._pause * 2))
        self._retry_at = time.monotonic() + self._pause

    def _up(self) -> None:
        if not self.database_reachable:
            log.info("audit store %s reachable", self.store.description)
        self.database_reachable = True
        self._pause = 0.0
        self._retry_at = 0.0

    def _catch_up(self) -> None:
        """Migrate if needed and replay the spool (a bounded amount per call, so new records keep flowing in)."""
        try:
            self.store.ensure_schema()
            for _ in range(8):
                if not self._replay_chunk():
                    break
            self._up()
        except Exception as exc:
            if not _is_outage(exc):
                log.exception("audit store: unexpected error while catching up")
            self._down(exc)

    def _replay_chunk(self) -> bool:
        """Replay one chunk of the spool; False when it is empty."""
        lines, end = self.spool.read(self.batch)
        if not lines:
            if end != self.spool.offset:  # only blank lines
                self.spool.commit(end, 0)
            return False
        rows: list[dict[str, Any]] = []
        kept: list[bytes] = []
        for line in lines:
            try:
                rows.append(_from_json(line))
                kept.append(line)
            except (ValueError, KeyError, TypeError) as exc:
                self.spool.reject(line, f"unreadable line: {type(exc).__name__}")
        self._insert_or_reject(rows, kept)
        self.spool.commit(end, len(lines))
        log.info("audit spool: %d records replayed, %d left", len(rows), self.spool.depth)
        return True

    def _insert_or_reject(self, rows: list[dict[str, Any]], lines: Sequence[bytes] | None = None) -> None:
        """Insert ``rows``; an outage propagates, a refusal of the data is narrowed to the rows that cause it."""
        try:
            queries.insert_records(self.store.engine, rows)
            return
        except Exception as exc:
            if _is_outage(exc) or len(rows) == 0:
                raise
        for index, row in enumerate(rows):
            try:
                queries.insert_records(self.store.engine, [row])
            except Exception as exc:
                if _is_outage(exc):
                    raise
                line = lines[index] if lines is not None else (_to_json(row) + "\n").encode()
                self.spool.reject(line, type(exc).__name__)

    def _write(self, records: list[DecisionRecord]) -> None:
        rows = [row_of(r) for r in records]
        try:
            if self.spool.depth > 0 or not self.store.ready or time.monotonic() < self._retry_at:
                self.spool.append(rows)  # behind the backlog, in order
            else:
                try:
                    self._insert_or_reject(rows)
                    self._up()
                except Exception as exc:
                    if not _is_outage(exc):
                        log.exception("audit store: unexpected error writing %d records", len(rows))
                    self._down(exc)
                    self.spool.append(rows)
        except OSError:
            # The spool itself cannot be written (disk full, read-only volume): nothing else can keep them.
            log.exception("audit records lost: neither the store nor the spool %s took them", self.spool.path)
        finally:
            self._settle(len(records))


async def retention_loop(
    store: Store,
    retention_days: float,
    result_retention_hours: float,
    interval_s: float = 3600.0,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Delete what is past its retention, now and every ``interval_s``; a failed round is logged and retried."""
    while True:
        try:
            await asyncio.to_thread(purge_expired, store, retention_days, result_retention_hours, now())
        except Exception as exc:
            log.warning(
                "retention: %s unreachable or failed (%s); next try in %.0f s", store.description, exc, interval_s
            )
        await asyncio.sleep(interval_s)


def purge_expired(store: Store, retention_days: float, result_retention_hours: float, now: datetime) -> tuple[int, int]:
    """(audit records, result instances) deleted as past their retention; 0 days / hours keeps them."""
    engine = store.require()
    records = queries.purge_records(engine, now - timedelta(days=retention_days)) if retention_days > 0 else 0
    results = (
        queries.purge_results(engine, now - timedelta(hours=result_retention_hours))
        if result_retention_hours > 0
        else 0
    )
    if records or results:
        log.info("retention: %d audit records and %d result instances deleted", records, results)
    return records, results
