"""The demo month the console's browser tests serve (helpers: tests/console_browser.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from console_browser import DEMO_SCENARIO
from demo_runs import demo_command, demo_databases, demo_env, drop_demo_databases


@pytest.fixture(scope="module")
def demo(tmp_path_factory, pg_server):
    """(ledger DSN, Airflow metadata DSN, OUT) of ``returnledger demo`` of the shipped month with faults
    (scenarios/small-month-faults.json, October closed on November 3rd), run for the module and its two
    databases dropped afterwards; or, with ``RETURNLEDGER_CONSOLE_DEMO_OUT=<OUT of an earlier make demo of
    that scenario>``, that demo's, left in place."""
    given = os.environ.get("RETURNLEDGER_CONSOLE_DEMO_OUT")
    out = Path(given) if given else tmp_path_factory.mktemp("console-demo") / "out"
    if not given:
        proc = subprocess.run(
            demo_command(DEMO_SCENARIO, out),
            env=demo_env(pg_server, out.parent / "airflow_home"),
            capture_output=True,
            text=True,
            timeout=1800,
        )
    ledger, meta = demo_databases(pg_server, out)
    try:
        if not given:
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        yield ledger, meta, out
    finally:
        if not given:
            drop_demo_databases(pg_server, out)
