"""The set-based apply writes the ledger the per-event path writes, row for row (issue 26, target 3).

One generated month with faults, shared returns notices, a rejected duplicate, over-receipts the warehouse
resolves and recounts (gen-60-21-...-reject-corrections) runs twice through every step of the sync against
the simulators, once with ``apply.SET_BASED`` off and once on, in two fresh ledgers; every table apply writes
is then compared on its natural columns (surrogate ids are left out: the paths insert in another order). Run
day by day (one or two events per line a run, the daily shape) and as one window over the whole month (each
line's whole chain at once, as ``bench_sync`` runs it).
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from returnledger.ledger import apply as apply_module
from returnledger.reference import load as reference
from returnledger.store import db, migrate
from returnledger_dev import scratch_db
from returnledger_dev.run_window import run_window
from returnledger_dev.scenarios import reference as scenario_reference
from scenario_parts import sandbox_amazon_client

pytestmark = pytest.mark.integration

SCENARIO = (
    Path(__file__).resolve().parents[1]
    / "fixtures"
    / "scenarios"
    / ("gen-60-21-faults-shared-notices-reject-corrections.json.gz")
)

#: what apply writes, each table's natural columns (no surrogate id), in a total order
TABLES = {
    "return_line": """SELECT return_id, line, state, quantity_received, grade, disposition, received_at,
                             dispositioned_at, updated_at, last_event_id, credit_quantity
                        FROM ledger.return_line""",
    "line_history": """SELECT return_id, line, from_state, to_state, event_id, cause, batch_id, at,
                              detail::text FROM ledger.line_history""",
    "event_outcome": "SELECT raw_id, status, detail, batch_id, decided_at FROM ledger.event_outcome",
    "held_event": """SELECT h.raw_id, h.return_id, h.line, h.reason, e.subject_key, h.held_at
                       FROM ledger.held_event h LEFT JOIN ledger.exception e USING (exception_id)""",
    "exception": """SELECT type, owner, status, subject_key, return_id, line, sku, raw_id, detail, opened_at,
                           opened_by_batch, resolved_at, resolved_by, resolution FROM ledger.exception""",
    "amazon_submission": """SELECT idempotency_key, kind, return_id, line, sku, asin, quantity, unit_amount,
                                   currency, document_id, status, created_at FROM ledger.amazon_submission""",
    "credit_note": """SELECT credit_note_id, return_id, returns_notice, created_at, created_batch
                        FROM ledger.credit_note""",
    "sku": "SELECT sku, available, updated_at FROM ledger.sku",
    "sync_run": "SELECT batch_id, window_end, (stats->'apply')::text FROM ledger.sync_run",
}


def _utc(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def _days(scenario):
    d, end = date.fromisoformat(scenario["run"]["from"]), date.fromisoformat(scenario["run"]["to"])
    while d <= end:
        yield d
        d += timedelta(days=1)


def _ledger_after(pg_server, scenario, tmp, monkeypatch, *, set_based: bool, daily: bool) -> dict:
    from returnledger_dev.sandbox.harness import run_sandbox

    monkeypatch.setattr(apply_module, "SET_BASED", set_based)
    taken: list[int] = []
    common = apply_module.apply_common

    def counted(*args, **kw):
        out = common(*args, **kw)
        taken.append(out["set_applied"])
        return out

    monkeypatch.setattr(apply_module, "apply_common", counted)
    dsn = scratch_db.create_scratch_database(pg_server, "rl_setapply")
    try:
        migrate.migrate(dsn)
        first = date.fromisoformat(scenario["run"]["from"])
        reference.load_reference(dsn, at=_utc(first))
        scenario_reference.load_scenario_reference(dsn, scenario, at=_utc(first))
        tmp.mkdir(parents=True, exist_ok=True)
        path = tmp / "scenario.json"
        path.write_text(json.dumps(scenario))
        with run_sandbox(path, tmp / "out", faults=True, timeout_delay_s=0.8) as sb:
            rebound = sb.rebound_client(timeout=0.5, backoff_max_s=0.2)
            amazon = sandbox_amazon_client(sb, backoff_max_s=0.5)
            vendor = {k: sb.amazon_extra[k] for k in ("party_id", "warehouse_id", "currency")}
            days = list(_days(scenario))
            ops: dict[str, list] = {}
            for op in scenario["operations"]:
                ops.setdefault(op["on"], []).append(op)
            for d in days if daily else days[-1:]:
                for op in ops.get(d.isoformat(), []) if daily else []:
                    scenario_reference.apply_operation(dsn, op, at=_utc(d), actor="test operator")
                run_window(dsn, rebound, amazon, window_end=_utc(d + timedelta(days=1)), vendor=vendor)
        with db.connect(dsn) as conn:
            tables = {name: sorted(map(repr, conn.execute(sql).fetchall())) for name, sql in TABLES.items()}
        return {**tables, "set_applied": sum(taken)}
    finally:
        scratch_db.drop_database(pg_server, dsn)


@pytest.mark.parametrize("daily", [True, False], ids=["day-by-day", "one-window"])
def test_set_based_apply_writes_the_ledger_the_per_event_path_writes(daily, pg_server, tmp_path, monkeypatch):
    scenario = json.loads(gzip.decompress(SCENARIO.read_bytes()))
    name = SCENARIO.name
    per_event = _ledger_after(
        pg_server, scenario, tmp_path / "per-event", monkeypatch, set_based=False, daily=daily
    )
    set_based = _ledger_after(pg_server, scenario, tmp_path / "set", monkeypatch, set_based=True, daily=daily)
    assert per_event["line_history"], f"the month {name} wrote no history"
    assert per_event["set_applied"] == 0
    assert set_based["set_applied"] > len(per_event["event_outcome"]) / 3, "the set path took too little"
    for table in TABLES:
        assert set_based[table] == per_event[table], table
