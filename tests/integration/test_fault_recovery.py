"""Faults on the real stack (issue 12): after the retry, the ledger and Amazon hold what a clean run gives.

- PostgreSQL restarted (immediate shutdown, i.e. a crash) in the middle of ``apply``, then the task retried.
- A process running ``push_credits`` killed with SIGKILL mid-batch, then the task retried.

The restart needs a server this test may restart: a scratch cluster of the machine's PostgreSQL binaries
(``/usr/lib/postgresql/*/bin``), initialised under the test's tmp folder. Where there are none, the
restart test skips and says why.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import psycopg
import pytest

from returnledger.amazon.confirm import confirm
from returnledger.amazon.push import push_credits, push_inventory
from returnledger.intake.feed import extract
from returnledger.ledger.apply import apply
from returnledger.moment import RunMoment, batch_id_for
from returnledger.screening.screen import quarantine, validate
from returnledger.store import db, migrate
from returnledger_dev import scratch_db

sys.path.insert(0, str(Path(__file__).parent))
from test_money_path import _amazon, _credits, _requests, _scenario, _start, _utc, _vendor

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    for cand in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (cand / "initdb").exists() and (cand / "pg_ctl").exists():
            return cand
    return None


class ScratchCluster:
    """A throw-away PostgreSQL cluster this test may crash and restart."""

    def __init__(self, root: Path):
        self.bin = _pg_bin()
        self.data = root / "pgdata"
        self.port = _free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.data / "log"),
            "-o",
            f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )

    def init(self) -> None:
        self.data.mkdir(parents=True)
        if self.as_user:
            shutil.chown(self.data.parent, "postgres")
            shutil.chown(self.data, "postgres")
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"
        )
        self.start()

    def crash_restart(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self.start()

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def cluster():
    if _pg_bin() is None:
        pytest.skip(
            "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin) to run a cluster this test may crash"
        )
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: initdb refuses root")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="rl-pg-"))  # pytest's tmp folders are 0700 root: the server user
    root.chmod(0o755)  # must be able to reach its data directory
    c = ScratchCluster(root)
    try:
        c.init()
    except subprocess.CalledProcessError as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start a scratch PostgreSQL cluster: {e.stderr.decode()[-500:]}")
    yield c
    c.stop()
    shutil.rmtree(root, ignore_errors=True)


def _month(n: int) -> dict:
    rows = [(f"RB-2-{i:07d}", f"RN-F{i}", f"SKU-{i % 7}", f"2026-10-{5 + i % 3:02d}", 1, 1) for i in range(n)]
    return _scenario(rows)


def _ledger_state(dsn: str) -> dict:
    with db.connect(dsn) as conn:
        return {
            "lines": sorted(
                conn.execute("SELECT return_id, line, state, quantity_received FROM ledger.return_line")
            ),
            "outbox": sorted(
                conn.execute(
                    "SELECT idempotency_key, quantity, unit_amount, document_id, status"
                    " FROM ledger.amazon_submission"
                )
            ),
            "history": conn.execute("SELECT count(*) FROM ledger.line_history").fetchone()[0],
            "outcomes": sorted(conn.execute("SELECT status, count(*) FROM ledger.event_outcome GROUP BY 1")),
            "exceptions": sorted(conn.execute("SELECT type, subject_key, status FROM ledger.exception")),
        }


def _sync_month(dsn, sb, *, crash=None) -> None:
    """One window over the whole month: extract, validate, quarantine, apply (crashed once), push, confirm."""
    rebound, amazon = sb.rebound_client(timeout=0.5, backoff_max_s=0.2), _amazon(sb)
    end = _utc(date(2026, 10, 9))
    batch = batch_id_for(end)
    extract(dsn, rebound, run=RunMoment(end, batch_id=batch))
    validate(dsn, batch_id=batch)
    quarantine(dsn, run=RunMoment(end, batch_id=batch))
    if crash is not None:
        crash(lambda: apply(dsn, run=RunMoment(end, batch_id=batch)))
    apply(dsn, run=RunMoment(end, batch_id=batch))  # the task's retry (or the only run)
    push_inventory(
        dsn,
        amazon,
        warehouse_id=_vendor(sb)["warehouse_id"],
        party_id="VNDR1",
        run=RunMoment(end, batch_id=batch),
    )
    push_credits(dsn, amazon, party_id="VNDR1", run=RunMoment(end, batch_id=batch))
    confirm(dsn, amazon, run=RunMoment(end, batch_id=batch), rounds=6, wait_s=0.3)


def test_postgresql_crash_in_the_middle_of_apply(cluster, tmp_path):
    from returnledger_dev.sandbox.harness import run_sandbox

    scenario = _month(60)
    clean = scratch_db.create_scratch_database(cluster.dsn, "rl_clean")
    faulty = scratch_db.create_scratch_database(cluster.dsn, "rl_crash")
    for dsn in (clean, faulty):
        migrate.migrate(dsn)
    path = _start(clean, scenario, tmp_path)
    _start(faulty, scenario, tmp_path, "s2.json")
    with run_sandbox(path, tmp_path / "clean", faults=False) as sb:
        _sync_month(clean, sb)
        sb.dump()

    seen: dict = {}

    def crash(apply):
        """Run apply on a thread; crash the server once its transaction is open; apply must fail."""

        def run():
            try:
                apply()
            except Exception as e:
                seen["error"] = e

        t = threading.Thread(target=run)
        t.start()
        deadline = time.monotonic() + 60
        name = psycopg.conninfo.conninfo_to_dict(faulty)["dbname"]
        with psycopg.connect(cluster.dsn, autocommit=True) as watch:
            while time.monotonic() < deadline:
                busy = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND xact_start IS NOT NULL"
                    " AND pid <> pg_backend_pid()",
                    (name,),
                ).fetchone()[0]
                if busy:
                    break
                time.sleep(0.005)
        cluster.crash_restart()
        t.join(120)
        seen["restarted"] = True

    with run_sandbox(path, tmp_path / "crash", faults=False) as sb:
        _sync_month(faulty, sb, crash=crash)
        sb.dump()
    assert seen.get("restarted") and "error" in seen, f"apply was not interrupted by the crash: {seen}"
    assert _ledger_state(faulty) == _ledger_state(clean)
    assert _credits(_requests(tmp_path / "crash")) == _credits(_requests(tmp_path / "clean"))
    with db.connect(faulty) as conn:
        assert conn.execute("SELECT * FROM ledger.audit_orphans()").fetchall() == []


_PUSHER = """
import sys, time, json
from datetime import datetime
from returnledger.amazon.push import push_credits
from returnledger.clients.amazon import AmazonVendorClient
from returnledger.moment import RunMoment
cfg = json.loads(sys.argv[1])
real = AmazonVendorClient(cfg["url"], lwa_url=cfg["lwa"], refresh_token=cfg["rt"], lwa_client_id=cfg["id"],
                          lwa_client_secret=cfg["secret"], rate_per_s=50, burst=50, backoff_max_s=0.2)
class Slow:
    def submit_invoices(self, invoices, **kw):
        time.sleep(0.15)
        return real.submit_invoices(invoices, **kw)
push_credits(cfg["dsn"], Slow(), party_id="VNDR1",
             run=RunMoment(datetime.fromisoformat(cfg["at"]), batch_id=cfg["batch"]))
print("finished", flush=True)
"""


@pytest.mark.parametrize("rule", ["same_note", "reject"])
def test_push_process_killed_mid_batch(fresh_db, tmp_path, rule, monkeypatch):
    from returnledger.amazon.claims import LEASE_ENV
    from returnledger_dev.sandbox.harness import run_sandbox

    monkeypatch.setenv(LEASE_ENV, "1")  # the killed pusher's claims (leases) run out a second after it died

    rows = [(f"RB-3-{i:07d}", f"RN-K{i}", "SKU-A", "2026-10-05", 1, 1) for i in range(20)]
    scenario = _scenario(rows, duplicate=rule)
    path = _start(fresh_db, scenario, tmp_path)
    with run_sandbox(path, tmp_path / "out", faults=False) as sb:
        rebound = sb.rebound_client(timeout=0.5, backoff_max_s=0.2)
        end = _utc(date(2026, 10, 6))
        batch = batch_id_for(end)
        extract(fresh_db, rebound, run=RunMoment(end, batch_id=batch))
        validate(fresh_db, batch_id=batch)
        apply(fresh_db, run=RunMoment(end, batch_id=batch))
        cfg = {
            "url": sb.amazon_url,
            "lwa": sb.lwa_url,
            "rt": sb.lwa_refresh_token,
            "id": sb.lwa_client_id,
            "secret": sb.lwa_client_secret,
            "dsn": fresh_db,
            "at": end.isoformat(),
            "batch": batch,
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", _PUSHER, json.dumps(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        with db.connect(fresh_db, autocommit=True) as conn:
            while time.monotonic() < deadline:
                sent = conn.execute(
                    "SELECT count(*) FROM ledger.submission_attempt WHERE outcome = 'ACCEPTED_202'"
                ).fetchone()[0]
                if sent >= 5:
                    break
                time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        with db.connect(fresh_db) as conn:
            left = conn.execute(
                "SELECT count(*) FROM ledger.amazon_submission WHERE status <> 'SUBMITTED'"
            ).fetchone()[0]
        assert 0 < left < 20, f"the kill must land mid-batch ({left} notes not submitted)"
        time.sleep(1.3)  # the task's retry comes after the dead pusher's leases ran out
        amazon = _amazon(sb)
        push_credits(
            fresh_db, amazon, party_id="VNDR1", run=RunMoment(end, batch_id=batch)
        )  # the task's retry
        confirm(fresh_db, amazon, run=RunMoment(end, batch_id=batch), rounds=8, wait_s=0.3)
        sb.dump()
    expected = {f"RN-K{i}|SKU-A": {"quantity": 1, "amount": "10.00"} for i in range(20)}
    assert _credits(_requests(tmp_path / "out")) == expected
    with db.connect(fresh_db) as conn:
        assert dict(
            conn.execute("SELECT status, count(*) FROM ledger.amazon_submission GROUP BY 1").fetchall()
        ) == {"ACCEPTED": 20}
        assert conn.execute("SELECT count(*) FROM ledger.exception").fetchone()[0] == 0
        assert conn.execute("SELECT count(DISTINCT state) FROM ledger.return_line").fetchone()[0] == 1
