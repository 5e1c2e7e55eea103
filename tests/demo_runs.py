"""``returnledger demo`` (what ``make demo`` runs) as the tests run it: its command, its environment, and
the two databases a demo makes for itself (its ledger, named in OUT/ledger_database.txt, and that ledger's
Airflow metadata ``<ledger>_airflow`` beside it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def demo_command(scenario: Path, out: Path, *args: str) -> list[str]:
    """``returnledger demo --scenario SCENARIO --out OUT [ARGS]`` with this interpreter's ``returnledger``."""
    cli = str(Path(sys.executable).with_name("returnledger"))
    return [cli, "demo", "--scenario", str(scenario), "--out", str(out), *args]


def demo_env(dsn: str, airflow_home: Path) -> dict[str, str]:
    """This environment less Airflow's and returnledger's variables, the demo's server or database as
    RETURNLEDGER_DSN and its Airflow home. Each demo keeps its own Airflow metadata beside its own ledger: one
    shared by demos of different ledgers held the first one's ledger Asset (its URI names the database) and
    refused the next demo's ("inactive assets")."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RETURNLEDGER"))}
    env.update(
        {
            "RETURNLEDGER_DSN": dsn,
            "RETURNLEDGER_AIRFLOW_HOME": str(airflow_home),
            "GX_ANALYTICS_ENABLED": "false",
        }
    )
    return env


def demo_databases(pg_server: str, out: Path) -> tuple[str, str]:
    """(ledger DSN, Airflow metadata DSN) of the demo that wrote ``out``."""
    from returnledger.store import db
    from returnledger_dev import scratch_db

    ledger = scratch_db.with_database(pg_server, (out / "ledger_database.txt").read_text().strip())
    return ledger, scratch_db.with_database(pg_server, f"{db.database_name(ledger)}_airflow"[:63])


def drop_demo_databases(pg_server: str, out: Path) -> None:
    """Drop the ledger and the Airflow metadata database the demo that wrote ``out`` made for itself."""
    from returnledger_dev import scratch_db

    for dsn in demo_databases(pg_server, out):
        scratch_db.drop_database(pg_server, dsn)
