"""Sync run bookkeeping: the batch id, the run's row in ``ledger.sync_run``, what bulk steps share.

A run is one window of the feed, ``[window_start, window_end)``; every step of it writes rows tagged
with its batch id, and the row in ``ledger.sync_run`` books when it finished and what it counted.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from returnledger.moment import RunMoment
from returnledger.store.db import unit_of_work

#: the actor of every automatic change a sync run makes (exceptions it raises or resolves, audit rows)
SYSTEM_ACTOR = "returns_sync"


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Bulk steps allocate millions of small, long-lived objects (rows, events, line views) and no cycles;
    the cyclic collector would rescan them over and over (about 2.5 s of CPU in an apply of 586k events)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def finish_run(dsn: str, *, run: RunMoment, stats: dict) -> None:
    """Book the run: the period it covered, [run.start, run.end), its counts, finished as of its end."""
    with unit_of_work(dsn) as conn:
        start_run(conn, run.batch_id, run.end)
        conn.execute(
            """UPDATE ledger.sync_run SET finished_at = %s, stats = %s::jsonb,
                               window_start = COALESCE(%s, window_start) WHERE batch_id = %s""",
            (run.as_of, json.dumps(stats, default=str), run.start, run.batch_id),
        )


def start_run(conn, batch_id: str, window_end: datetime) -> None:
    """The run's row in ``ledger.sync_run`` (once per batch id); the caller commits."""
    conn.execute(
        """INSERT INTO ledger.sync_run (batch_id, window_end, started_as_of) VALUES (%s, %s, %s)
                    ON CONFLICT (batch_id) DO NOTHING""",
        (batch_id, window_end, window_end),
    )
