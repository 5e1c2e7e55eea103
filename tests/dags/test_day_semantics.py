"""The run for day D covers day D: data interval [D, D+1) UTC, listed under D, reads what was delivered
before D+1.

Guards issue 10: with ``@daily`` (a cron *trigger* timetable in Airflow 3) the run for D read only
what was delivered before D 00:00, so a reason mapping added on D+1 was applied before the run that
first read D's events (no UNMAPPED_REASON_CODE), and the last scenario day was never read.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from scenario_parts import full_credit_policy, vendor

ROOT = Path(__file__).resolve().parents[2]
DAGS = ("returns_sync", "returns_reconciliation", "returns_operating_checks", "returns_weekly_review")


@pytest.mark.parametrize("dag_id", DAGS)
def test_scheduled_run_for_day_d_covers_day_d(dag_id):
    """The scheduler's run listed under D (its logical date) has a data interval starting on D."""
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    from returnledger_dev.demo.airflow_run import covering_interval, load_dag

    dag = load_dag(dag_id)
    day = date(2026, 10, 5)
    start, end = covering_interval(dag, day)
    assert start.date() == day, (dag_id, start, end)
    assert end > start
    info = coerce_to_core_timetable(dag.timetable).next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=datetime(2026, 10, 5, tzinfo=UTC), latest=None, catchup=True),
    )
    assert info.logical_date.date() == day  # the UI lists it under D
    assert info.run_after >= info.data_interval.end  # and it starts once the period is over
    if dag_id in ("returns_sync", "returns_reconciliation"):
        assert (start, end) == (
            datetime(2026, 10, 5, tzinfo=UTC),
            datetime(2026, 10, 6, tzinfo=UTC),
        )


def test_hourly_setting_gives_hourly_periods():
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    from returnledger.airflow.schedule import period_schedule

    tt = coerce_to_core_timetable(period_schedule("@hourly"))
    import pendulum

    info = tt.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(
            earliest=pendulum.datetime(2026, 10, 5, 13, tz="UTC"), latest=None, catchup=True
        ),
    )
    assert (info.data_interval.start, info.data_interval.end) == (
        datetime(2026, 10, 5, 13, tzinfo=UTC),
        datetime(2026, 10, 5, 14, tzinfo=UTC),
    )


def _event(eid: str, typ: str, rid: str, at: str, **extra) -> dict:
    return {"event_id": eid, "type": typ, "return_id": rid, "occurred_at": at, **extra}


def _scenario() -> dict:
    """Two days. R1: every event on 5 Oct with an unmapped reason, mapped by operations on 6 Oct.
    R2: every event on 6 Oct, the scenario's last day."""

    def lifecycle(n: int, rid: str, day: str) -> list[dict]:
        p = f"ev-day-{n}"
        return [
            _event(f"{p}-1", "RETURN_CREATED", rid, f"{day}T08:00:00Z"),
            _event(f"{p}-2", "IN_TRANSIT", rid, f"{day}T09:00:00Z"),
            _event(f"{p}-3", "RECEIVED", rid, f"{day}T15:00:00Z", line=1, quantity=1),
            _event(f"{p}-4", "GRADED", rid, f"{day}T16:00:00Z", line=1, grade="B"),
            _event(f"{p}-5", "DISPOSITIONED", rid, f"{day}T17:00:00Z", line=1, disposition="REFURBISH"),
        ]

    def order(n: int, rid: str, day: str, reason: str) -> dict:
        return {
            "return_id": rid,
            "order_reference": f"203-000000{n}-0000000",
            "created_at": f"{day}T08:00:00Z",
            "amazon_refs": {"returns_notice": f"RNDAY{n}", "rma_id": f"RMADAY{n}", "vret": f"VRETDAY{n}"},
            "lines": [{"line": 1, "sku": "SKU-DAY", "quantity": 1, "reason": reason}],
        }

    return {
        "format": "returns-scenario/1",
        "name": "day-semantics",
        "description": "issue 10 regression",
        "vendor": vendor(),
        "run": {"from": "2026-10-05", "to": "2026-10-06", "close_period": "2026-10"},
        "policy": full_credit_policy(),
        "catalog": [{"sku": "SKU-DAY", "asin": "B0DAY00001", "unit_cost": "10.00", "available": 5}],
        "reason_codes": [{"rebound_reason": "FAULTY", "amazon_reason": "CR-DEFECTIVE"}],
        "rebound": {
            "returns": [
                order(1, "RB-1-0000001", "2026-10-05", "NEW_REASON_DAY"),
                order(2, "RB-1-0000002", "2026-10-06", "FAULTY"),
            ],
            "events": lifecycle(1, "RB-1-0000001", "2026-10-05") + lifecycle(2, "RB-1-0000002", "2026-10-06"),
            "invalid_events": [],
        },
        "amazon": {"returns": [], "credit_outcomes": []},
        "operations": [
            {
                "on": "2026-10-06",
                "action": "add_reason_mapping",
                "rebound_reason": "NEW_REASON_DAY",
                "amazon_reason": "CR-OTHER",
            }
        ],
        "faults": {},
    }


@pytest.mark.e2e
@pytest.mark.slow
def test_day_d_events_raise_on_d_and_release_on_d_plus_1(tmp_path, pg_server):
    from returnledger.store import db
    from returnledger_dev import scratch_db
    from returnledger_dev.demo.ledger_db import LEDGER_FILE

    scenario = tmp_path / "day.json"
    scenario.write_text(json.dumps(_scenario()))
    ledger = scratch_db.create_scratch_database(pg_server, "rl_day")
    meta = scratch_db.create_scratch_database(pg_server, "rl_day_airflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RETURNLEDGER"))}
    env.update(
        {
            "RETURNLEDGER_DSN": ledger,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": scratch_db.sqlalchemy_url(meta),
            "RETURNLEDGER_AIRFLOW_HOME": str(tmp_path / "airflow_home"),
            "GX_ANALYTICS_ENABLED": "false",
        }
    )
    try:
        out = tmp_path / "out"
        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "returnledger"),
                "demo",
                "--scenario",
                str(scenario),
                "--out",
                str(out),
                "--no-close",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        with (out / "exceptions.csv").open() as f:
            exc = [r for r in csv.DictReader(f) if r["type"] == "UNMAPPED_REASON_CODE"]
        # raised by the run for 5 Oct (which read 5 Oct's events), released by the run for 6 Oct
        assert [(r["return_id"], r["line"], r["status"]) for r in exc] == [
            ("RB-1-0000001", "1", "resolved")
        ], exc
        assert exc[0]["opened_at"].startswith("2026-10-06T00:00"), exc[0]
        posts = [json.loads(x) for x in (out / "amazon_requests.jsonl").read_text().splitlines() if x.strip()]
        notices = sorted(
            {
                p["body"]["invoices"][0]["creditNoteDetails"]["returnsReferenceNumber"]
                for p in posts
                if p["method"] == "POST" and p["path"].endswith("/invoices") and p["status"] == 202
            }
        )
        # R1 credited once released on 6 Oct; R2's events, all on the last day, were read and credited
        assert notices == ["RNDAY1", "RNDAY2"], notices
        # the ledger the demo made for itself on the DSN's server
        own = scratch_db.with_database(ledger, (out / LEDGER_FILE).read_text().strip())
        with db.connect(own) as conn:
            runs = conn.execute(
                "SELECT window_start, window_end FROM ledger.sync_run ORDER BY window_end"
            ).fetchall()
        utc = UTC
        assert runs == [
            (datetime(2026, 10, 5, tzinfo=utc), datetime(2026, 10, 6, tzinfo=utc)),
            (datetime(2026, 10, 6, tzinfo=utc), datetime(2026, 10, 7, tzinfo=utc)),
        ], runs
    finally:
        scratch_db.drop_database(pg_server, ledger)
        scratch_db.drop_database(pg_server, meta)
        if (tmp_path / "out" / LEDGER_FILE).exists():
            own = scratch_db.with_database(pg_server, (tmp_path / "out" / LEDGER_FILE).read_text().strip())
            scratch_db.drop_database(pg_server, own)
            scratch_db.drop_database(
                pg_server, scratch_db.with_database(pg_server, f"{db.database_name(own)}_airflow")
            )
