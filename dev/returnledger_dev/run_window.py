"""One sync run end to end, outside the scheduler: the DAG ``returns_sync``'s steps in its order.

Tests run a window with ``run_window``; the DAG calls the same step functions, one task each:
extract -> validate -> quarantine / apply -> push_inventory, push_credits -> confirm -> finish. It is dev
tooling: it calls every business subpackage, and production runs the steps through the DAG.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from returnledger.amazon.confirm import confirm
from returnledger.amazon.push import push_credits, push_inventory
from returnledger.intake.feed import extract
from returnledger.ledger.apply import apply
from returnledger.ledger.runs import batch_id_for, finish_run
from returnledger.screening.screen import batch_outcome, quarantine, validate


def run_window(
    dsn: str,
    rebound,
    amazon,
    *,
    window_end: datetime,
    vendor: dict,
    result_dir: Path | None = None,
    window_start: datetime | None = None,
) -> dict:
    """Every step of one sync run in the DAG's order, outside the scheduler (tests, benchmarks)."""
    batch_id = batch_id_for(window_end)
    stats: dict[str, Any] = {"extract": extract(dsn, rebound, window_end=window_end, batch_id=batch_id)}
    stats["validate"] = validate(dsn, batch_id=batch_id, result_dir=result_dir)
    outcome = batch_outcome(stats["validate"])
    if outcome.failures:
        stats["quarantine"] = quarantine(dsn, batch_id=batch_id, at=window_end)
    if outcome.applicable:
        stats["apply"] = apply(dsn, batch_id=batch_id, at=window_end, currency=vendor.get("currency", "GBP"))
    stats["push_inventory"] = push_inventory(
        dsn,
        amazon,
        warehouse_id=vendor["warehouse_id"],
        party_id=vendor["party_id"],
        at=window_end,
        batch_id=batch_id,
    )
    stats["push_credits"] = push_credits(
        dsn, amazon, party_id=vendor["party_id"], at=window_end, batch_id=batch_id
    )
    stats["confirm"] = confirm(dsn, amazon, at=window_end, batch_id=batch_id)
    finish_run(
        dsn, batch_id=batch_id, window_end=window_end, stats=stats, at=window_end, window_start=window_start
    )
    return stats
