"""A real ``airflow api-server`` with this repo's plugins for the console tests: Airflow metadata in a
scratch PostgreSQL database, the simple auth manager with the given users, the ledger as RETURNS_DB."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGINT to the server's own process group (its clean shutdown), SIGKILL only if it hangs."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextmanager
def running_api_server(
    workdir: Path,
    pg_server: str,
    ledger_dsn: str,
    *,
    users: dict[str, str],
    passwords: dict[str, str],
    dags_folder: Path,
    extra_env: dict[str, str] | None = None,
    migrate_timeout: float = 180,
    up_timeout: float = 90,
    metadata_dsn: str | None = None,
) -> Iterator[str]:
    """Start the api-server (``users``: name -> role, ``passwords``: name -> password) and yield its base
    URL once the console answers; stopped and its metadata database dropped afterwards. ``metadata_dsn``:
    an existing Airflow metadata database (a demo's, with its runs) used as it is and left in place."""
    from returnledger_dev import scratch_db

    meta_dsn = metadata_dsn or scratch_db.create_scratch_database(pg_server, prefix="airflow_meta")
    proc = log = None
    try:
        home = workdir / "airflow_home"
        home.mkdir()
        (home / "passwords.json").write_text(json.dumps(passwords))
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k != "RETURNLEDGER_DSN"}
        env.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in users.items()),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": scratch_db.sqlalchemy_url(meta_dsn),
                "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(48).hex(),
                "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
                "AIRFLOW__API__PORT": str(port),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
                "AIRFLOW_CONN_RETURNS_DB": scratch_db.airflow_connection_json(ledger_dsn),
                "GX_ANALYTICS_ENABLED": "false",
                **(extra_env or {}),
            }
        )
        airflow = str(Path(sys.executable).with_name("airflow"))
        subprocess.run(
            [airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=migrate_timeout
        )
        log_path = workdir / "api-server.log"
        log = log_path.open("w")
        proc = subprocess.Popen(
            [airflow, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + up_timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"api-server exited: {log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/returnledger/", timeout=2).status_code == 401:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"api-server not up: {log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        if proc is not None:
            stop(proc)
        if log is not None:
            log.close()
        if metadata_dsn is None:
            scratch_db.drop_database(pg_server, meta_dsn)
