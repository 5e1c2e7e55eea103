"""The ledger a demo runs on: a database the demo creates for itself, never one it was pointed at.

``make demo`` and ``make cluster-demo`` used to reset the ledger at the default DSN (RETURNLEDGER_DSN or the
embedded server), so a demo wiped whatever ledger was there, another demo's included. Now the DSN only
names the *server*: each demo creates a uniquely named database there, marked as a scratch database
(returnledger_dev.scratch_db.create_scratch_database), and records its name in OUT/ledger_database.txt.
``--keep-db`` continues that recorded database, and only if it carries the mark; anything else is refused,
naming the database and why.
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg

from returnledger.store import db
from returnledger_dev import scratch_db

log = logging.getLogger(__name__)

#: where a demo records the database it created (in its OUT folder)
LEDGER_FILE = "ledger_database.txt"


def own_ledger(server_dsn: str, out_dir: Path, *, keep: bool, created_by: str, prefix: str) -> str:
    """The DSN of this demo's own ledger on ``server_dsn``'s server: a new scratch database, or with
    ``keep`` the one an earlier demo into ``out_dir`` created (refused unless it carries the mark)."""
    recorded = out_dir / LEDGER_FILE
    if keep:
        if not recorded.is_file():
            raise scratch_db.NotScratchDatabase(
                f"--keep-db continues the ledger an earlier demo created for {out_dir}, but {recorded} is"
                " missing: there is no demo ledger to continue (run once without --keep-db)"
            )
        dsn = scratch_db.with_database(server_dsn, recorded.read_text().strip())
        scratch_db.require_scratch(dsn, action="continue a demo in")
        return dsn
    _drop_previous(server_dsn, recorded)
    dsn = scratch_db.create_scratch_database(server_dsn, prefix, created_by=created_by)
    recorded.write_text(db.database_name(dsn) + "\n")
    log.info("demo ledger: database %s (created for this demo)", db.database_name(dsn))
    return dsn


def _drop_previous(server_dsn: str, recorded: Path) -> None:
    """The ledger the previous demo into this OUT folder created, if it carries the scratch mark and no
    one uses it any more (a running demo keeps its own: DROP without FORCE then fails and it stays)."""
    if not recorded.is_file():
        return
    name = recorded.read_text().strip()
    previous = scratch_db.with_database(server_dsn, name)
    try:
        scratch_db.require_scratch(previous, action="drop the previous demo ledger")
    except scratch_db.NotScratchDatabase as exc:
        log.info("previous demo ledger kept: %s", exc)
        return
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        for victim in (name, f"{name}_airflow"[:63], f"{name}_cluster"[:63]):  # its Airflow metadata too
            try:
                conn.execute(
                    psycopg.sql.SQL("DROP DATABASE IF EXISTS {}").format(psycopg.sql.Identifier(victim))
                )
            except psycopg.Error as exc:
                log.info("previous demo database %s kept: %s", victim, exc)
