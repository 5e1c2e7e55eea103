"""``make airflow``: a local ``airflow standalone`` that stops cleanly on Ctrl-C.

Standalone stops its components on SIGINT, but its output threads can wait
forever on a pipe that a grandchild process still holds, leaving zombies
behind. This wrapper runs standalone in its own process group, forwards the
first Ctrl-C (or SIGTERM) as SIGINT, waits for a clean exit, and only then
ends whatever is left of the group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def group_alive(pgid: int) -> bool:
    """Is any process of the process group ``pgid`` left? (One of another user's counts as alive.)"""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def tail(path: Path, n: int = 12) -> list[str]:
    """The last ``n`` lines of a log file (none when it is unreadable): what a failure shows on screen."""
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def ensure_database(admin_dsn: str, name: str, *, fresh: bool) -> None:
    """Airflow's metadata database ``name`` on the ledger's server; ``fresh``: empty (no old runs)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if fresh:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def init_metadata(pools: list[dict]) -> None:
    """Airflow's own tables in the configured metadata database (``airflow db migrate``) and the pools."""
    from airflow import settings as af_settings
    from airflow.models.pool import Pool
    from airflow.utils import db as af_db

    af_settings.configure_orm()
    af_db.initdb()
    for pool in pools:
        Pool.create_or_update_pool(pool["name"], pool["slots"], pool["description"], include_deferred=False)


def run_standalone(grace_s: float = 30.0) -> int:
    # the connection form's Test button (the hooks' test_connection): Airflow ships it Disabled
    os.environ.setdefault("AIRFLOW__CORE__TEST_CONNECTION", "Enabled")
    proc = subprocess.Popen(["airflow", "standalone"], start_new_session=True)
    stopping = {"at": None}

    def stop(signum, frame):
        if stopping["at"] is None:
            stopping["at"] = time.monotonic()
            print("\nreturnledger: stopping airflow standalone ...", file=sys.stderr, flush=True)
            os.killpg(proc.pid, signal.SIGINT)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while proc.poll() is None:
        if stopping["at"] is not None and time.monotonic() - stopping["at"] > grace_s:
            break
        time.sleep(0.2)
    clean = proc.poll() is not None
    for sig in (signal.SIGTERM, signal.SIGKILL):  # whatever is left of the group (stuck pipes, workers)
        if not group_alive(proc.pid):
            break
        os.killpg(proc.pid, sig)
        deadline = time.monotonic() + 10
        while group_alive(proc.pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(-proc.pid, os.WNOHANG)
            time.sleep(0.2)
    proc.poll()
    print(
        "returnledger: airflow standalone stopped"
        + ("" if clean else " (its components exited; its stuck output threads were ended)"),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_standalone())
