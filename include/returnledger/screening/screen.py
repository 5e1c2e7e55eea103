"""Screening a batch: the one entry of the events suite (validate) and what it decides (quarantine).

validate builds the frame (returnledger.screening.frame), runs the suite (returnledger.screening.suite)
and records each failing row; quarantine turns the failures into exceptions and holds the events that
wait on them (returnledger.ledger.holds). ``batch_outcome`` says which of the two paths a batch needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import psycopg

from returnledger.exception_queue.queue import NewException, raise_exceptions
from returnledger.exception_types import Holds, Subject, kind, screening_outcome
from returnledger.ledger.holds import hold, hold_subject, record_outcomes
from returnledger.moment import RunMoment
from returnledger.screening.frame import read_validation_frame
from returnledger.screening.gx import import_gx
from returnledger.screening.suite import events_docs_page, validate_frame, write_result
from returnledger.store.db import connect, unit_of_work
from returnledger.store.objects import DATA_DOCS
from returnledger.store.raw_floor import FLOOR_MARK, at_floor, current_floor, raise_floor

log = logging.getLogger(__name__)


def validate(dsn: str, *, batch_id: str, result_dir: Path | None = None) -> dict:
    """Run the GX events suite over every landed, unprocessed event; record per-row failures."""
    import threading

    # GX takes seconds to import: do it while PostgreSQL builds the frame (the import lock makes the
    # validation below wait for it if it is not done yet)
    warm = threading.Thread(target=import_gx, name="import-gx", daemon=True)
    warm.start()
    with connect(dsn) as conn:
        floor = raise_floor(conn)  # the frame reads from the raw floor up (every event below it was examined)
        frame = read_validation_frame(conn, floor)
        warm.join()
        outcome = validate_frame(frame, run_name=batch_id)
        if outcome.failed:
            f = outcome.failed
            conn.execute(
                """
                INSERT INTO ledger.validation_failure (raw_id, batch_id, exception_type, detail, return_id,
                                                       line, sku, check_name)
                SELECT r, %b, t, d, rid, ln, s, c
                  FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[], %b::int[], %b::text[],
                              %b::text[])
                       AS x(r, t, d, rid, ln, s, c)
                ON CONFLICT (raw_id) DO NOTHING""",
                (
                    batch_id,
                    [v.raw_id for v in f],
                    [str(v.exception_type) for v in f],
                    [v.detail for v in f],
                    [v.return_id for v in f],
                    [v.line for v in f],
                    [v.sku for v in f],
                    [v.check for v in f],
                ),
            )
        conn.commit()
        pending = _count(
            conn,
            "SELECT count(*) FROM ledger.validation_failure f JOIN ledger.raw_event r USING (raw_id)"
            f" WHERE f.raw_id >= {int(floor)}"  # below the floor every event has its outcome
            " AND NOT EXISTS (SELECT 1 FROM ledger.event_outcome o WHERE o.raw_id = r.raw_id"
            f" AND o.raw_id >= {int(floor)})",
        )
        held = _count(conn, "SELECT count(*) FROM ledger.held_event")
    if result_dir is not None:
        written = write_result(outcome, result_dir, batch_id)
        if outcome.gx_key is not None:  # the run's log links its Data Docs page
            page = result_dir.parent / DATA_DOCS / events_docs_page(batch_id)
            log.info("validate %s: result %s; Data Docs page %s", batch_id, written, page)
    stats = {"rows": outcome.rows, "passed": len(outcome.passed), "failed": pending, "held": held}
    log.info("validate %s: %s", batch_id, stats)
    return stats


def _count(conn: psycopg.Connection, sql: str) -> int:
    row = conn.execute(sql).fetchone()
    return row[0] if row else 0


@dataclass(frozen=True)
class BatchOutcome:
    """What screening found in a batch, i.e. which steps it needs next."""

    failures: bool  # events failed a check: their exceptions are raised and the events held or refused
    applicable: bool  # events passed or wait in holds: the lifecycle rules run (also when nothing failed)


def batch_outcome(stats: dict) -> BatchOutcome:
    """The outcome of a batch from ``validate``'s counts."""
    failures = bool(stats.get("failed"))
    return BatchOutcome(
        failures=failures, applicable=bool(stats.get("passed") or stats.get("held") or not failures)
    )


def quarantine(dsn: str, *, run: RunMoment) -> dict:
    """One exception per failing row (per line for reference failures, per event id for conflicting bodies,
    per return for a failing return order); hold the events that wait on it."""
    batch_id, at = run.batch_id, run.as_of
    with unit_of_work(dsn) as conn:
        sql = f"""
            SELECT f.raw_id, f.exception_type, f.detail, f.return_id, f.line, f.sku, r.event_id
            FROM ledger.validation_failure f JOIN ledger.raw_event r USING (raw_id)
            WHERE f.raw_id >= {FLOOR_MARK}  -- below the raw floor every event has its outcome
              AND NOT EXISTS (SELECT 1 FROM ledger.event_outcome o WHERE o.raw_id = r.raw_id
                                                                   AND o.raw_id >= {FLOOR_MARK})
            ORDER BY f.raw_id"""
        rows = conn.execute(at_floor(sql, current_floor(conn))).fetchall()
        invalid, held = [], []
        for raw_id, etype, detail, rid, ln, sku, event_id in rows:
            if screening_outcome(etype) == "refuse":  # the registry: a raw-event type that holds nothing
                invalid.append(
                    NewException(
                        etype,
                        f"raw:{raw_id}",
                        detail,
                        return_id=rid,
                        line=ln,
                        sku=sku,
                        raw_id=raw_id,
                    )
                )
            else:
                held.append((raw_id, etype, detail, rid, ln, sku, hold_subject(etype, rid, ln, event_id)))
        raise_exceptions(conn, invalid, at=at, batch_id=batch_id)
        line_ex: dict[tuple[str, str], NewException] = {}
        for raw_id, etype, detail, rid, ln, sku, subject in held:
            k = kind(etype)
            line_ex.setdefault(
                (etype, subject),
                NewException(
                    etype,
                    subject,
                    detail,
                    return_id=rid,
                    line=None if k.holds is Holds.RETURN else ln,
                    sku=sku,
                    raw_id=raw_id if k.subject is Subject.EVENT else None,
                ),
            )
        raise_exceptions(conn, list(line_ex.values()), at=at, batch_id=batch_id)
        hold(
            conn,
            [(raw_id, rid, ln, etype, subject) for raw_id, etype, _, rid, ln, _, subject in held],
            at=at,
            batch_id=batch_id,
        )
        if invalid:
            record_outcomes(
                conn,
                "INVALID",
                [e.raw_id for e in invalid],
                [e.detail for e in invalid],
                batch_id=batch_id,
                at=at,
            )
    stats = {"invalid": len(invalid), "held": len(held), "lines_held": len(line_ex)}
    log.info("quarantine %s: %s", batch_id, stats)
    return stats
