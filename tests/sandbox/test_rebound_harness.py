"""Both simulators together: the in-process harness and the background ``serve`` command."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import UTC, datetime

import httpx
import pytest

from returnledger_dev.sandbox.server import free_port

pytest.importorskip(
    "returnledger_dev.sandbox.spapi_sim", reason="the SP-API simulator (A2) is not in place yet"
)


def test_run_sandbox_serves_both_and_dumps(scenarios_dir, tmp_path):
    from returnledger_dev.sandbox.harness import run_sandbox

    path = scenarios_dir / "small-month-faults.json"
    raw = json.loads(path.read_text())
    with run_sandbox(path, tmp_path / "out", faults=False) as sb:
        assert httpx.get(f"{sb.rebound_url}/_sandbox/health").json()["simulated"] == "rebound"
        assert httpx.get(f"{sb.amazon_url}/_sandbox/health").status_code == 200
        assert httpx.get(f"{sb.rebound_url}/_sandbox/stats").json()["faults"] == {
            "error_rate": 0.0,
            "timeout_rate": 0.0,
        }
        with sb.rebound_client(page_size=1000) as client:
            pages = list(client.iter_event_pages(None, datetime(2026, 12, 1, tzinfo=UTC)))
        assert sum(len(p.events) for p in pages) == len(raw["rebound"]["events"]) + len(
            raw["rebound"]["invalid_events"]
        ) + sum(1 for e in raw["rebound"]["events"] if e.get("duplicate"))
        token = httpx.post(
            sb.lwa_url,
            data={
                "grant_type": "refresh_token",
                "refresh_token": sb.lwa_refresh_token,
                "client_id": sb.lwa_client_id,
                "client_secret": sb.lwa_client_secret,
            },
        )
        assert token.status_code == 200 and token.json()["access_token"]
        assert (
            sb.amazon_extra["lwa_url"] == sb.lwa_url
            and sb.amazon_extra["party_id"] == raw["vendor"]["party_id"]
        )
        sb.dump()
    with (tmp_path / "out" / "amazon_inventory.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["sku"] for r in rows} == {c["sku"] for c in raw["catalog"]}
    assert (sb.landing_dir / "vendor_central_returns_2026-10.csv").exists()


def test_run_sandbox_keeps_faults_by_default(scenarios_dir, tmp_path):
    from returnledger_dev.sandbox.harness import run_sandbox

    with run_sandbox(scenarios_dir / "small-month-faults.json", tmp_path / "out", seed=3) as sb:
        faults = httpx.get(f"{sb.rebound_url}/_sandbox/stats").json()["faults"]
    assert faults == {"error_rate": 0.05, "timeout_rate": 0.01}


def _serve(*args, state):
    return subprocess.run(
        [sys.executable, "-m", "returnledger_dev.sandbox.serve", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_start_status_stop(scenarios_dir, tmp_path):
    state, out = tmp_path / "state", tmp_path / "out"
    rb, am = free_port(), free_port()
    start = [
        "start",
        "--scenario",
        str(scenarios_dir / "small-month.json"),
        "--out",
        str(out),
        "--rebound-port",
        str(rb),
        "--amazon-port",
        str(am),
    ]
    started = _serve(*start, "--no-faults", state=state)
    try:
        assert started.returncode == 0, started.stderr
        assert f"http://127.0.0.1:{rb}" in started.stdout and "SIMULATED" in started.stdout
        status = _serve("status", state=state)
        assert status.returncode == 0 and json.loads(status.stdout)["healthy"] == {
            "rebound": True,
            "amazon": True,
        }
        assert _serve(*start, state=state).returncode == 1
    finally:
        stopped = _serve("stop", state=state)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert _serve("status", state=state).returncode == 3
    assert (out / "amazon_inventory.csv").exists()  # written on the way out
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{rb}/_sandbox/health")


def test_serve_reports_a_broken_scenario(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "x"}))
    r = _serve(
        "start",
        "--scenario",
        str(bad),
        "--out",
        str(tmp_path / "out"),
        "--rebound-port",
        str(free_port()),
        "--amazon-port",
        str(free_port()),
        state=tmp_path / "state",
    )
    assert r.returncode == 1 and "format: expected 'returns-scenario/1', got 'x'" in r.stderr
    assert not (tmp_path / "state" / "sandbox.pid").exists()


def test_register_cli_adds_sandbox_commands():
    import argparse

    from returnledger_dev.sandbox.serve import register

    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    args = p.parse_args(["sandbox", "start", "--scenario", "s.json", "--no-faults"])
    assert args.func.__name__ == "cmd_start" and args.no_faults and args.rebound_port == 8701
    assert p.parse_args(["sandbox", "stop"]).func.__name__ == "cmd_stop"
