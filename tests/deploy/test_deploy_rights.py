"""Issue 21, finding 8: deployment rights.

- The runtime role (what the DAGs, workers and console log in as) cannot alter or drop a ledger table nor
  disable or drop the append-only triggers, on the real PostgreSQL; the whole pipeline (sync through both
  simulators, a month-end close, its report, a rerun and a daily check's expiry) still works under it.
- The compose file refuses to start with a ``change-me`` or empty secret, and only the containers that
  need it get the database superuser's password.
- CSV exports for people neutralise formula prefixes in text that came from ReBound.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml

from returnledger.store import db, migrate
from returnledger_dev import scratch_db

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

pytestmark = pytest.mark.integration


def _as(dsn: str, role: str) -> str:
    from returnledger_dev.cluster.spec import role_dsn

    return role_dsn(dsn, role)


@pytest.fixture
def deployed(pg_server):
    """A ledger migrated the way airflow-init does it: an owner nobody logs in as, a runtime role."""
    dsn = scratch_db.create_scratch_database(pg_server, "rl_rights")
    try:
        migrate.migrate(dsn, owner=migrate.OWNER_ROLE, runtime=migrate.LEDGER_ROLE)
        yield dsn
    finally:
        scratch_db.drop_database(pg_server, dsn)


DENIED = (
    "ALTER TABLE ledger.raw_event ADD COLUMN sneaky int",
    "ALTER TABLE ledger.return_line DROP CONSTRAINT IF EXISTS return_line_pkey",
    "DROP TABLE ledger.submission_attempt",
    "DROP TABLE ledger.raw_event CASCADE",
    "ALTER TABLE ledger.submission_attempt DISABLE TRIGGER submission_attempt_append_only",
    "ALTER TABLE ledger.raw_event DISABLE TRIGGER ALL",
    "DROP TRIGGER submission_attempt_append_only ON ledger.submission_attempt",
    "DROP TRIGGER raw_event_keeps_rows ON ledger.raw_event",
    "TRUNCATE ledger.submission_attempt",
    "CREATE TABLE ledger.sneaky (x int)",
    "CREATE OR REPLACE FUNCTION ledger.forbid_removal() RETURNS trigger LANGUAGE plpgsql"
    " AS $$ BEGIN RETURN OLD; END $$",
    "DROP FUNCTION ledger.refuse_change_to_send_log() CASCADE",
    f"SET ROLE {migrate.OWNER_ROLE}",
    f"ALTER SCHEMA ledger OWNER TO {migrate.LEDGER_ROLE}",
)


def test_runtime_role_cannot_alter_the_schema_or_its_triggers(deployed):
    with psycopg.connect(deployed) as c:
        owners = c.execute("""SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c
                                JOIN pg_namespace n ON n.oid = c.relnamespace
                               WHERE n.nspname = 'ledger'""").fetchall()
        owner = c.execute(
            "SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = %s", (migrate.OWNER_ROLE,)
        ).fetchone()
    assert owners == [(migrate.OWNER_ROLE,)]
    assert owner == (False, False), "nobody logs in as the owner"
    with psycopg.connect(_as(deployed, migrate.LEDGER_ROLE), autocommit=True) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == migrate.LEDGER_ROLE
        for statement in DENIED:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(statement)
        # the triggers are still there and still refuse
        with pytest.raises(psycopg.errors.RaiseException):
            c.execute("DELETE FROM ledger.raw_event")
    with psycopg.connect(deployed) as c:
        triggers = {
            r[0]
            for r in c.execute(
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgenabled = 'O'"
                " AND tgrelid::regclass::text LIKE 'ledger.%'"
            )
        }
    assert {"submission_attempt_append_only", "raw_event_keeps_rows", "return_line_keeps_rows"} <= triggers


def test_runtime_role_gets_rights_on_what_later_migrations_add(deployed, monkeypatch):
    files = [*migrate.migration_files(), ("9999_added_later.sql", "CREATE TABLE ledger.added_later (id int)")]
    monkeypatch.setattr(migrate, "migration_files", lambda: files)
    assert migrate.migrate(deployed) == ["9999_added_later.sql"]  # the administrator, no roles named
    with psycopg.connect(_as(deployed, migrate.LEDGER_ROLE)) as c:
        c.execute("INSERT INTO ledger.added_later VALUES (1)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("DROP TABLE ledger.added_later")


def test_whole_pipeline_runs_under_the_runtime_role(deployed, tmp_path):
    """Sync days through both simulators, a month-end close (its partition is built through the owner's
    functions), a rerun of the close, and the report."""
    from test_money_path import SHARED, _amazon, _credits, _requests, _scenario, _start, _utc, _vendor

    from returnledger.reconciliation.match import reconcile
    from returnledger.reports.finance import write_month_end_report
    from returnledger_dev.run_window import run_window
    from returnledger_dev.sandbox.harness import run_sandbox

    runtime = _as(deployed, migrate.LEDGER_ROLE)
    scenario = _scenario(SHARED)
    path = _start(runtime, scenario, tmp_path)
    with run_sandbox(path, tmp_path / "out", faults=False) as sb:
        d, last = date(2026, 10, 5), date(2026, 10, 9)
        while d <= last:
            run_window(
                runtime,
                sb.rebound_client(timeout=0.5, backoff_max_s=0.05),
                _amazon(sb),
                window_end=_utc(d + timedelta(days=1)),
                vendor=_vendor(sb),
            )
            d += timedelta(days=1)
        sb.dump()
    assert len(_credits(_requests(tmp_path / "out"))) == 4
    first = reconcile(runtime, "2026-10", as_of=_utc(date(2026, 10, 10)), batch_id="r1")
    again = reconcile(runtime, "2026-10", as_of=_utc(date(2026, 10, 10)), batch_id="r2")
    assert first.by_status == again.by_status and first.rows >= 4
    assert first.written["inserted"] == first.rows and again.written["inserted"] == 0
    report = write_month_end_report(runtime, "2026-10", str(tmp_path / "reports"))
    assert report
    with psycopg.connect(deployed) as c:
        parts = c.execute(
            "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_inherits i JOIN pg_class c"
            " ON c.oid = i.inhrelid WHERE i.inhparent = 'ledger.recon_result'::regclass"
        ).fetchall()
    assert parts and {p[1] for p in parts} == {migrate.OWNER_ROLE}
    with psycopg.connect(runtime) as c:
        c.execute("SELECT ledger.analyze_table('ledger.exception'::regclass)")
        with pytest.raises(psycopg.errors.RaiseException):
            c.execute("SELECT ledger.analyze_table('pg_catalog.pg_class'::regclass)")


# --- the compose file --------------------------------------------------------------------------------------

COMPOSE_FILE = ROOT / "docker-compose.yaml"
SECRET_NAMES = (
    "_AIRFLOW_WWW_USER_PASSWORD",
    "AIRFLOW_DB_PASSWORD",
    "RETURNLEDGER_LEDGER_PASSWORD",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
)


def _compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _run_check(tmp_path: Path, env: dict[str, str], superuser: str | None) -> subprocess.CompletedProcess:
    """The secrets-check service's script, run here by bash the way the container runs it."""
    script = _compose()["services"]["secrets-check"]["command"][1].replace("$$", "$")
    secrets = tmp_path / "run-secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "postgres_password").unlink(missing_ok=True)
    if superuser is not None:
        (secrets / "postgres_password").write_text(superuser + "\n")
    return subprocess.run(
        ["bash", "-c", script],
        env={"PATH": "/usr/bin:/bin", "SECRETS_DIR": str(secrets), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def _example_env() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(ln.split("=", 1) for ln in lines if "=" in ln and not ln.startswith("#"))


def test_compose_refuses_default_secrets(tmp_path):
    compose = _compose()
    services = compose["services"]
    # every other service waits for the check to succeed
    for name, svc in services.items():
        if name == "secrets-check":
            continue
        assert svc.get("depends_on", {}).get("secrets-check") == {
            "condition": "service_completed_successfully"
        }, name
    good = {n: f"s3cret-{i}-value" for i, n in enumerate(SECRET_NAMES)}
    assert _run_check(tmp_path, good, "superuser-s3cret").returncode == 0
    # the example as shipped, an old .env with change-me, and each secret alone left at a default
    example = {n: v for n, v in _example_env().items() if n in SECRET_NAMES}
    assert set(example) == set(SECRET_NAMES) and not any(example.values()), "the example ships no secret"
    refused = _run_check(tmp_path, example, None)
    assert refused.returncode != 0
    for n in (*SECRET_NAMES, "secrets/postgres_password"):
        assert n in refused.stderr
    for name in SECRET_NAMES:
        for bad in ("change-me", "", "CHANGE-ME"):
            r = _run_check(tmp_path, {**good, name: bad}, "superuser-s3cret")
            assert r.returncode != 0 and name in r.stderr, (name, bad, r.stderr)
    r = _run_check(tmp_path, good, "change-me")
    assert r.returncode != 0 and "secrets/postgres_password" in r.stderr
    # compose itself refuses a missing secret (the ${NAME:?message} interpolation)
    for name in SECRET_NAMES:
        assert re.search(r"\$\{" + name + r":\?", COMPOSE_FILE.read_text()), name
    _compose_config_refuses_the_example(tmp_path)


def test_only_the_services_that_need_it_get_the_superuser_password():
    compose = _compose()
    text = COMPOSE_FILE.read_text()
    assert "POSTGRES_PASSWORD}" not in text and "POSTGRES_PASSWORD:" not in text.replace(
        "POSTGRES_PASSWORD_FILE:", ""
    ), "the superuser's password is a compose secret, never an interpolated variable"
    assert "POSTGRES_PASSWORD" not in _example_env(), ".env reaches every Airflow container"
    with_secret = {
        n for n, s in compose["services"].items() if "postgres_password" in (s.get("secrets") or [])
    }
    assert with_secret == {"postgres", "secrets-check", "db-init", "airflow-init"}
    env = compose["x-airflow-common"]["environment"]
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
        assert "://airflow:${AIRFLOW_DB_PASSWORD:?" in env[key], key  # the metadata role, not the superuser
    init = "\n".join(compose["services"]["db-init"]["command"])
    assert "NOSUPERUSER" in init and "ALTER DATABASE airflow OWNER TO airflow" in init
    assert compose["services"]["postgres"]["environment"]["POSTGRES_USER"] == "postgres"


def _compose_binary() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) and subprocess.run([*cmd, "version"], capture_output=True).returncode == 0:
            return cmd
    return None


def _compose_config_refuses_the_example(tmp_path: Path) -> None:
    """``docker compose config`` (no engine needed) on the example .env: refused, naming a secret; with every
    secret filled it renders, and no Airflow container's environment holds the superuser's password."""
    cmd = _compose_binary()
    if cmd is None:
        return  # the static checks above still hold; test_compose.py says how to install the binary
    work = tmp_path / "compose"
    work.mkdir()
    shutil.copy(COMPOSE_FILE, work / "docker-compose.yaml")
    (work / "secrets").mkdir()
    (work / "secrets" / "postgres_password").write_text("superuser-s3cret\n")
    example = (ROOT / ".env.example").read_text()
    (work / ".env").write_text(example)
    refused = subprocess.run([*cmd, "config", "-q"], cwd=work, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert any(n in refused.stderr + refused.stdout for n in SECRET_NAMES), refused.stderr
    filled = example
    for i, n in enumerate(SECRET_NAMES):
        filled = re.sub(rf"^{n}=$", f"{n}=filled-{i}", filled, flags=re.M)
    (work / ".env").write_text(filled)
    done = subprocess.run([*cmd, "config"], cwd=work, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)
    for name, svc in rendered["services"].items():
        values = json.dumps(svc.get("environment") or {})
        if name.startswith("airflow-"):
            assert "superuser-s3cret" not in values, name


# --- CSV exports people open in a spreadsheet ---------------------------------------------------------------

HOSTILE = {"sku": '=HYPERLINK("http://x","SKU")', "notice": "+RN-1", "rma": "-RMA-1", "vret": "@VRET-1"}


def test_csv_export_neutralises_formulas(pg_server, tmp_path):
    """ReBound's text in month_end_report.csv and exceptions.csv never starts like a formula; the scenario
    checker reads the values back exactly."""
    from test_money_path import _amazon, _scenario, _start, _utc, _vendor

    from returnledger.exception_queue.queue import NewException, raise_exceptions
    from returnledger.models import ExceptionType
    from returnledger.reconciliation.match import reconcile
    from returnledger.reports.finance import write_month_end_report
    from returnledger_dev.demo.outputs import export_exceptions
    from returnledger_dev.run_window import run_window
    from returnledger_dev.sandbox.harness import run_sandbox
    from returnledger_dev.scenarios.check import _csv_rows

    dsn = scratch_db.create_scratch_database(pg_server, "rl_csv")
    try:
        migrate.migrate(dsn)
        scenario = _scenario([("RB-1-0000001", HOSTILE["notice"], HOSTILE["sku"], "2026-10-05", 1, 1)])
        refs = scenario["rebound"]["returns"][0]["amazon_refs"]
        refs["rma_id"], refs["vret"] = HOSTILE["rma"], HOSTILE["vret"]
        path = _start(dsn, scenario, tmp_path)
        with run_sandbox(path, tmp_path / "out", faults=False) as sb:
            for day in (5, 6, 7):
                run_window(
                    dsn,
                    sb.rebound_client(timeout=0.5, backoff_max_s=0.05),
                    _amazon(sb),
                    window_end=_utc(date(2026, 10, day + 1)),
                    vendor=_vendor(sb),
                )
        reconcile(dsn, "2026-10", as_of=_utc(date(2026, 10, 10)), batch_id="r1")
        write_month_end_report(dsn, "2026-10", str(tmp_path / "report"))
        with db.connect(dsn) as conn:
            raise_exceptions(
                conn,
                [
                    NewException(
                        ExceptionType.INVALID_EVENT, "raw:999", "-2+3 is not an event", sku="@SUM(A1)"
                    )
                ],
                at=_utc(date(2026, 10, 8)),
                batch_id="t",
            )
            conn.commit()
        export_exceptions(dsn, tmp_path / "report")
    finally:
        scratch_db.drop_database(pg_server, dsn)

    for name in ("month_end_report.csv", "exceptions.csv"):
        with (tmp_path / "report" / name).open(newline="") as f:
            cells = [c for row in csv.reader(f) for c in row]
        assert cells and not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], name
    report = _csv_rows(tmp_path / "report" / "month_end_report.csv")
    assert report is not None
    line = next(r for r in report if r["return_id"] == "RB-1-0000001")
    assert (line["sku"], line["returns_notice"], line["rma_id"], line["vret"]) == (
        HOSTILE["sku"],
        HOSTILE["notice"],
        HOSTILE["rma"],
        HOSTILE["vret"],
    )
    assert line["recon_status"] == "MATCHED" and line["credited_amount"] == "10.00"
    raw = (tmp_path / "report" / "month_end_report.csv").read_text()
    assert "'=HYPERLINK" in raw and ",'+RN-1," in raw
    exceptions = _csv_rows(tmp_path / "report" / "exceptions.csv")
    assert exceptions is not None
    hostile = next(r for r in exceptions if r["sku"] == "@SUM(A1)")
    assert hostile["detail"] == "-2+3 is not an event"
    # values that only look like formulas in a spreadsheet round-trip exactly
    from returnledger.render import from_spreadsheet_text, spreadsheet_text

    for v in ("=1", "+1", "-1", "@a", "\tx", "\rx", "'x", "''=", "plain", "", "a=b"):
        assert from_spreadsheet_text(spreadsheet_text(v)) == v
        assert spreadsheet_text(v)[:1] not in ("=", "+", "-", "@", "\t", "\r")
