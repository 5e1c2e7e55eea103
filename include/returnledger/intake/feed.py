"""Reading the ReBound feed: the stored cursor, chunks landed as they are read, the feed report.

extract is the first step of a sync run: raw rows and the cursor move commit together per chunk, then
the return orders the new events name are fetched (returnledger.intake.orders).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from returnledger.clients.rebound import ReboundError
from returnledger.exception_queue.queue import NewException, raise_exceptions, resolve_open
from returnledger.intake.orders import fetch_return_orders
from returnledger.intake.raw import land_rows, raw_rows
from returnledger.ledger.runs import SYSTEM_ACTOR, no_cyclic_gc, start_run
from returnledger.models import ExceptionType
from returnledger.moment import RunMoment
from returnledger.store.db import connect, unit_of_work

log = logging.getLogger(__name__)

#: the feed's row in ``ledger.sync_cursor``
CURSOR_NAME = "rebound_events"


class _ChunkWriter:
    """Lands parsed chunks (raw rows, then the cursor, one transaction each) on a thread of its own, so
    PostgreSQL stores chunk k while this process reads and parses chunk k+1. Chunks land in order;
    the first failure stops the reader at its next hand-over and is raised from ``close``."""

    def __init__(self, conn, *, cursor: str | None, window_end: datetime, batch_id: str, stats: dict):
        import queue
        import threading

        self.conn, self.cursor, self.window_end, self.batch_id, self.stats = (
            conn,
            cursor,
            window_end,
            batch_id,
            stats,
        )
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="extract-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain: the reader stops at its next put
            rows, delivered, position = item
            try:
                with unit_of_work(self.conn):
                    if rows:
                        new, repeats, without_id = land_rows(
                            self.conn, rows, delivered, window_end=self.window_end, batch_id=self.batch_id
                        )
                        self.stats["new"] += new
                        self.stats["repeats"] += repeats
                        self.stats["without_id"] += without_id
                    if position is not None and position != self.cursor:
                        _set_cursor(self.conn, position, at=self.window_end, batch_id=self.batch_id)
            except BaseException as exc:
                self.error = exc

    def put(self, rows: dict, delivered: int, position: str | None) -> None:
        if self.error is not None:
            self.close()
        self.queue.put((rows, delivered, position))

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error


def _set_cursor(conn, position: str, *, at: datetime, batch_id: str) -> None:
    conn.execute(
        """INSERT INTO ledger.sync_cursor (name, position, updated_at, batch_id) VALUES (%s, %s, %s, %s)
                    ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position,
                    updated_at = EXCLUDED.updated_at, batch_id = EXCLUDED.batch_id""",
        (CURSOR_NAME, position, at, batch_id),
    )


def extract(dsn: str, client, *, run: RunMoment, chunk: int = 20_000) -> dict:
    """Read the feed from the stored cursor up to the run's end; land raw rows, then move the cursor.

    Raw rows and the cursor move commit together per chunk, so a crash re-reads
    at most one chunk, and the event-key dedupe absorbs the re-read.
    """
    window_end, batch_id = run.end, run.batch_id
    stats = {
        "delivered": 0,
        "new": 0,
        "repeats": 0,
        "without_id": 0,
        "return_orders": 0,
        "unknown_returns": 0,
        "invalid_return_orders": 0,
    }
    with no_cyclic_gc(), connect(dsn) as conn:
        start_run(conn, batch_id, window_end)
        row = conn.execute(
            "SELECT position FROM ledger.sync_cursor WHERE name = %s", (CURSOR_NAME,)
        ).fetchone()
        conn.commit()  # each chunk below is its own transaction: raw rows and the cursor commit together
        cursor = row[0] if row else None
        buffer: list[Any] = []
        position = cursor
        writer = _ChunkWriter(conn, cursor=cursor, window_end=window_end, batch_id=batch_id, stats=stats)
        problem = None
        try:
            try:
                for page in client.iter_event_pages(cursor, until=window_end, raw=True):
                    buffer.extend(page.events)
                    stats["delivered"] += len(page.events)
                    position = page.next_cursor
                    if len(buffer) >= chunk:
                        writer.put(raw_rows(buffer), len(buffer), position)
                        buffer = []
            except ReboundError as e:
                # a feed that does not advance, a malformed page, or ReBound down through the retries: keep
                # every page read so far (the cursor stops after the last good one), report it, and let the
                # run go on with what the ledger holds, so one bad page never stops credits already owed
                problem = e
            writer.put(raw_rows(buffer) if buffer else {}, len(buffer), position)
        finally:
            writer.close()
        _report_feed(conn, problem, position, at=window_end, batch_id=batch_id, stats=stats)
        stats["return_orders"], stats["unknown_returns"], stats["invalid_return_orders"] = (
            fetch_return_orders(conn, client, at=window_end, batch_id=batch_id)
        )
    log.info("extract %s: %s", batch_id, stats)
    return stats


FEED_SUBJECT = "feed:rebound"


def _report_feed(
    conn, problem: Exception | None, position: str | None, *, at: datetime, batch_id: str, stats: dict
) -> None:
    """SYNC_STALLED for a feed the sync could not read to its end; resolved by the next complete read."""
    with unit_of_work(conn):
        if problem is None:
            resolve_open(
                conn,
                ExceptionType.SYNC_STALLED,
                [FEED_SUBJECT],
                at=at,
                actor=SYSTEM_ACTOR,
                resolution="the ReBound feed was read to the window end again",
            )
            return
        stats["feed_problem"] = f"{type(problem).__name__}: {problem}"[:500]
        log.error("extract %s: ReBound feed stopped at cursor %s: %s", batch_id, position, problem)
        raise_exceptions(
            conn,
            [
                NewException(
                    ExceptionType.SYNC_STALLED,
                    FEED_SUBJECT,
                    f"the ReBound feed could not be read past cursor {position!r} ({type(problem).__name__}: "
                    f"{str(problem)[:300]}); events up to there are in, the rest is read on the next run",
                )
            ],
            at=at,
            batch_id=batch_id,
        )
