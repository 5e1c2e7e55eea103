"""End to end: the real DAGs through ``dag.test()`` against PostgreSQL and both simulators.

A small generated scenario runs day by day through ``returnledger demo`` (the
same runner as ``make demo``) in a subprocess, so Airflow gets its own home and
metadata database. The outcome is compared with the scenario's expected file
using the scenario checker (returnledger_dev.scenarios.check).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from demo_runs import demo_command, demo_env, drop_demo_databases

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
CHECKS = ("credits", "Amazon model", "inventory", "exceptions", "reconciliation", "post-hoc returns")


def _generate(generated_month, out: Path, *, returns: int, seed: int, faults: bool) -> Path:
    scenario, expected = generated_month(returns, seed, faults)
    (out / "scenario.json").write_text(json.dumps(scenario))
    (out / "scenario.expected.json").write_text(json.dumps(expected))
    return out / "scenario.json"


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, pg_server, generated_month):
    """A scenario with faults, its own ledger and Airflow metadata databases, and a runner."""
    from returnledger_dev import scratch_db

    base = tmp_path_factory.mktemp("e2e")
    scenario = _generate(generated_month, base, returns=25, seed=11, faults=True)
    ledger = scratch_db.create_scratch_database(pg_server, "rl_e2e")
    # no shared Airflow metadata: each demo keeps its own beside its own ledger (dropped below)
    env = demo_env(ledger, base / "airflow_home")

    def run(out: str, *args: str) -> subprocess.CompletedProcess:
        cmd = demo_command(scenario, base / out, *args)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500, cwd=ROOT)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        return proc

    yield {
        "base": base,
        "scenario": scenario,
        "expected": base / "scenario.expected.json",
        "run": run,
        "dsn": ledger,
    }
    scratch_db.drop_database(pg_server, ledger)
    for recorded in base.glob("*/ledger_database.txt"):  # the ledgers the demos made for themselves
        drop_demo_databases(pg_server, recorded.parent)


def _check(e2e, out: str) -> dict[str, str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "returnledger_dev.scenarios.check",
            str(e2e["expected"]),
            str(e2e["base"] / out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    results = {}
    for line in proc.stdout.splitlines():
        for name in CHECKS:
            if line[5:].startswith(name + ":"):
                results[name] = line
    return results


def _posts(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r for r in rows if r["method"] == "POST"]


def test_month_without_faults_matches_expected(e2e):
    e2e["run"]("clean", "--no-faults")
    results = _check(e2e, "clean")
    assert set(results) == set(CHECKS), results
    bad = {k: v for k, v in results.items() if not v.startswith("ok")}
    assert not bad, bad


def test_rerunning_a_day_sends_nothing_new(e2e):
    """Clear-and-rerun of a day already done: no new Amazon submissions, ledger unchanged."""
    from returnledger.store import db
    from returnledger_dev import scratch_db
    from returnledger_dev.demo.ledger_db import LEDGER_FILE

    # the clean run's own ledger (the demo made it on the DSN's server), continued into another OUT
    clean = (e2e["base"] / "clean" / LEDGER_FILE).read_text()
    (e2e["base"] / "rerun").mkdir(exist_ok=True)
    (e2e["base"] / "rerun" / LEDGER_FILE).write_text(clean)
    dsn = scratch_db.with_database(e2e["dsn"], clean.strip())

    def snapshot():
        with db.connect(dsn) as conn:
            return (
                conn.execute(
                    "SELECT return_id, line, state FROM ledger.return_line ORDER BY 1, 2"
                ).fetchall(),
                conn.execute(
                    "SELECT idempotency_key, status, document_id FROM ledger.amazon_submission ORDER BY 1"
                ).fetchall(),
                conn.execute("SELECT count(*) FROM ledger.exception").fetchone(),
            )

    before = snapshot()
    e2e["run"]("rerun", "--keep-db", "--no-faults", "--days", "2026-10-12", "--no-close")
    assert snapshot() == before
    assert _posts(e2e["base"] / "rerun" / "amazon_requests.jsonl") == []


def test_faults_give_the_same_outcome(e2e):
    e2e["run"]("faults")
    results = _check(e2e, "faults")
    bad = {k: v for k, v in results.items() if not v.startswith("ok")}
    assert not bad, bad
    # and the faults really were there: some Amazon answers were 5xx or 429
    statuses = [
        json.loads(x)["status"]
        for x in (e2e["base"] / "faults" / "amazon_requests.jsonl").read_text().splitlines()
        if x.strip()
    ]
    assert any(s >= 500 or s == 429 for s in statuses)
    clean = {
        (r["type"], r["return_id"], r["line"], r["status"])
        for r in csv.DictReader((e2e["base"] / "clean" / "exceptions.csv").open())
    }
    faulty = {
        (r["type"], r["return_id"], r["line"], r["status"])
        for r in csv.DictReader((e2e["base"] / "faults" / "exceptions.csv").open())
    }
    assert clean == faulty


def test_every_malformed_event_is_an_invalid_event_with_its_payload(e2e):
    from returnledger.store import db
    from returnledger_dev import scratch_db
    from returnledger_dev.demo.ledger_db import LEDGER_FILE
    from returnledger_dev.sandbox.scenario import load_scenario_dict

    scenario = load_scenario_dict(e2e["scenario"])
    recorded = e2e["base"] / "faults" / LEDGER_FILE
    if not recorded.exists():  # run alone: the faults month first
        e2e["run"]("faults")
    # the ledger the faults demo made for itself, on the test server
    with db.connect(scratch_db.with_database(e2e["dsn"], recorded.read_text().strip())) as conn:
        rows = conn.execute("""SELECT r.payload FROM ledger.exception e JOIN ledger.raw_event r USING (raw_id)
                               WHERE e.type = 'INVALID_EVENT'""").fetchall()
        touched = conn.execute("""SELECT count(*) FROM ledger.line_history h JOIN ledger.raw_event_status r
                                  ON r.event_id = h.event_id WHERE r.status = 'INVALID'""").fetchone()[0]
    payloads = [r[0] for r in rows]
    for bad in scenario["rebound"]["invalid_events"]:
        assert bad in payloads, bad
    assert touched == 0
