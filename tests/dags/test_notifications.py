"""Mail actually leaves: digests and failure notifications caught by a real local SMTP server.

aiosmtpd listens on a free loopback port; Airflow's ``smtp_default`` connection
points at it through ``AIRFLOW_CONN_SMTP_DEFAULT``. The slow tests run real
``dag.test()`` runs in a subprocess (own AIRFLOW_HOME, Airflow metadata in a
fresh PostgreSQL database): a tiny failing DAG must mail both the task failure
and the DAG-run failure, and ``returns_operating_checks`` must mail one digest
per owner team with the ledger's counts.
"""

from __future__ import annotations

import email
import json
import re
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airflow_dag_run import throwaway_airflow
from returnledger.store import db
from returnledger_dev import scratch_db

ROOT = Path(__file__).resolve().parents[2]
AS_OF = datetime(2026, 10, 10, tzinfo=UTC)


class Inbox:
    def __init__(self):
        self.messages: list[tuple[list[str], email.message.Message]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"

    def wait_for(self, n: int, timeout: float = 10.0):
        end = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < end:
            time.sleep(0.05)
        return self.messages


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smtp_uri(port: int) -> str:
    return f"smtp://127.0.0.1:{port}?disable_tls=true&disable_ssl=true&from_email=returnledger%40test.local"


@pytest.fixture
def smtp(monkeypatch):
    """A real SMTP server on loopback; smtp_default points at it."""
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_uri(port))
    inbox.port = port
    try:
        yield inbox
    finally:
        controller.stop()


def html_of(msg) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/html":
            return part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
    raise AssertionError("no HTML part")


def counts_of(msg) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r'data-count="(\w+)">(\d+)<', html_of(msg))}


def seed_small_ledger(dsn: str) -> None:
    """Three open exceptions (one over SLA), one stalled credit note, a sync that ran on time."""
    d = lambda *a: datetime(*a, tzinfo=UTC)  # noqa: E731
    with db.connect(dsn) as c:
        c.execute(
            "INSERT INTO ledger.owner_team (exception_type, owner, sla_days) VALUES"
            " ('UNMAPPED_REASON_CODE', 'operations', 2), ('SKU_MISMATCH', 'operations', 2),"
            " ('QUANTITY_MISMATCH', 'warehouse', 5), ('SYNC_STALLED', 'integration', 1),"
            " ('CREDIT_MISSING', 'finance', 5)"
        )
        c.execute(
            "INSERT INTO ledger.return_order (return_id, returns_notice)"
            " VALUES ('R-1', 'RN-1'), ('R-2', 'RN-2')"
        )
        c.execute(
            "INSERT INTO ledger.return_line (return_id, line, sku, reason, quantity_announced, state)"
            " VALUES ('R-1', 1, 'SKU-1', 'GIFT', 1, 'ANNOUNCED'), ('R-2', 1, 'SKU-2', 'FAULTY', 2,"
            " 'DISPOSITIONED')"
        )
        for t, owner, subject, opened in (
            ("UNMAPPED_REASON_CODE", "operations", "R-1|1", d(2026, 10, 9, 8)),
            ("SKU_MISMATCH", "operations", "R-1|2", d(2026, 10, 6)),
            ("QUANTITY_MISMATCH", "warehouse", "R-2|1", d(2026, 10, 8)),
        ):
            c.execute(
                "INSERT INTO ledger.exception (type, owner, subject_key, detail, opened_at, opened_by_batch)"
                " VALUES (%s, %s, %s, %s, %s, 'seed')",
                (t, owner, subject, f"{t} on {subject}", opened),
            )
        c.execute(
            "INSERT INTO ledger.amazon_submission (idempotency_key, kind, return_id, line, sku, quantity,"
            " status, created_at, created_batch) VALUES ('credit:R-2:1', 'CREDIT_NOTE', 'R-2', 1, 'SKU-2', 2,"
            " 'PENDING', %s, 'seed')",
            (d(2026, 10, 8),),
        )
        c.execute(
            "INSERT INTO ledger.sync_run (batch_id, window_end, started_as_of, finished_at) VALUES"
            " ('returns_sync:2026-10-09', %s, %s, %s)",
            (AS_OF, d(2026, 10, 9, 0, 1), d(2026, 10, 9, 0, 9)),
        )
        c.commit()


EXPECTED_DAILY = {  # after the check raised SYNC_STALLED for the pending credit note
    "operations": {"open": 2, "new": 1, "sla_breached": 1},
    "warehouse": {"open": 1, "new": 0, "sla_breached": 0},
    "finance": {"open": 0, "new": 0, "sla_breached": 0},
    "integration": {"open": 1, "new": 1, "stalled_submissions": 1, "sync_late": 0},
}


def test_digest_mail_arrives_with_the_right_counts(fresh_db, smtp, tmp_path, monkeypatch):
    from returnledger.airflow import notifiers as notify
    from returnledger.exception_queue import stalled
    from returnledger.reports import digests as oc

    seed_small_ledger(fresh_db)
    monkeypatch.setenv("AIRFLOW_VAR_RETURNLEDGER_TEAM_EMAILS", json.dumps({"finance": "ap-team@test.local"}))
    assert stalled.check_stalled_flows(fresh_db, as_of=AS_OF)["raised"] == 1
    summaries = oc.build_and_write(fresh_db, as_of=AS_OF, kind="daily", out_dir=tmp_path)
    sent = [notify.send_digest(s) for s in summaries]
    assert sent == [
        "ap-team@test.local",
        "integration@localhost",
        "operations@localhost",
        "warehouse@localhost",
    ]
    msgs = smtp.wait_for(4)
    assert len(msgs) == 4
    by_to = {rcpt[0]: m for rcpt, m in msgs}
    for team, expected in EXPECTED_DAILY.items():
        msg = by_to["ap-team@test.local" if team == "finance" else f"{team}@localhost"]
        assert msg["From"] == "returnledger@test.local"
        assert msg["Subject"].startswith(f"[returnledger] daily digest 2026-10-10 for {team}:")
        assert msg["X-Returnledger-Digest"] == f"daily:{team}"
        got = counts_of(msg)
        assert {k: got[k] for k in expected} == expected, team
    assert "credit:R-2:1" in html_of(by_to["integration@localhost"])
    # the mail is the file
    assert (
        html_of(by_to["operations@localhost"]).strip()
        == (tmp_path / "daily-2026-10-10-operations.html").read_text().strip()
    )


class _TI:
    dag_id, task_id, run_id, try_number = "returns_sync", "push_credits", "scheduled__2026-10-05", 3


def test_failure_callbacks_mail_task_and_dag_failures(smtp, monkeypatch):
    from returnledger.airflow.notifiers import dag_failure_callbacks, failure_callbacks

    monkeypatch.setenv("AIRFLOW_VAR_RETURNLEDGER_ALERT_TO", "oncall@test.local")
    task_ctx = {
        "ti": _TI(),
        "run_id": _TI.run_id,
        "ds": "2026-10-05",
        "exception": RuntimeError("Amazon answered 503 {{ not jinja }}"),
    }
    for cb in failure_callbacks():
        cb(task_ctx)
    for cb in dag_failure_callbacks():
        cb({"run_id": "manual__2026-10-06", "reason": "task_failure"})  # minimal DAG-callback context
    msgs = smtp.wait_for(2)
    assert [m["Subject"] for _, m in msgs] == [
        "[returnledger] returns_sync / push_credits failed for 2026-10-05",
        "[returnledger] DAG ? failed for manual__2026-10-06",
    ]
    assert all(rcpt == ["oncall@test.local"] for rcpt, _ in msgs)
    body = html_of(msgs[0][1])
    assert "Amazon answered 503 &#123;&#123; not jinja &#125;&#125;" in body and "(try 3)" in body
    assert "task_failure" in html_of(msgs[1][1])


def test_failure_notifier_never_raises_when_mail_is_down(monkeypatch, caplog):
    from returnledger.airflow.notifiers import failure_callbacks

    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_uri(_free_port()) + "&retry_limit=0&timeout=2")
    for cb in failure_callbacks():
        cb({"ti": _TI(), "run_id": "r", "exception": ValueError("x")})  # must not raise
    assert "could not send the task failure mail" in caplog.text


# --- dag.test() in a real Airflow (subprocess) -----------------------------------------------------------

FAILING_DAG = '''
"""A DAG that fails on purpose (test fixture for failure notifications)."""
from datetime import datetime

from airflow.sdk import dag, task

from returnledger.airflow.defaults import default_args
from returnledger.airflow.notifiers import dag_failure_callbacks


@dag(schedule=None, start_date=datetime(2026, 10, 1), catchup=False,
     default_args={**default_args(owner="integration"), "retries": 0},
     on_failure_callback=dag_failure_callbacks(), tags=["test"])
def failing_on_purpose():
    @task
    def boom():
        raise RuntimeError("simulated failure in boom")

    boom()


failing_on_purpose()
'''


@pytest.fixture(scope="module")
def airflow_env(pg_server, tmp_path_factory):
    """A throwaway Airflow: own home, metadata in a fresh PostgreSQL database, migrated once."""
    dag_files: dict[str, str | bytes] = {"failing_on_purpose.py": FAILING_DAG}
    for name in ("returns_operating_checks.py", "returns_weekly_review.py"):
        dag_files[name] = (ROOT / "dags" / name).read_bytes()
    with throwaway_airflow(
        pg_server,
        tmp_path_factory.mktemp("airflow_home"),
        dag_files=dag_files,
        prefix="d1_airflow_meta",
        extra_env={"AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"},
        migrate_timeout=180,
    ) as airflow:
        yield airflow


@pytest.mark.slow
def test_dag_test_of_a_failing_dag_mails_task_and_dag_failure(airflow_env, smtp):
    out = airflow_env.test(
        "failing_on_purpose",
        timeout=300,
        extra_env={
            "AIRFLOW_CONN_SMTP_DEFAULT": smtp_uri(smtp.port),
            "AIRFLOW_VAR_RETURNLEDGER_ALERT_TO": "oncall@test.local",
        },
    )
    assert "STATE failed" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    msgs = smtp.wait_for(2)
    subjects = sorted(m["Subject"] for _, m in msgs)
    assert len(msgs) == 2, [*subjects, out.stdout[-3000:], out.stderr[-5000:]]
    assert subjects[0].startswith("[returnledger] DAG failing_on_purpose failed for ")
    assert subjects[1].startswith("[returnledger] failing_on_purpose / boom failed for ")
    task_mail = next(m for _, m in msgs if "/ boom" in m["Subject"])
    assert "simulated failure in boom" in html_of(task_mail)
    assert all(rcpt == ["oncall@test.local"] for rcpt, _ in msgs)


@pytest.mark.slow
def test_dag_test_of_operating_checks_mails_one_digest_per_team(airflow_env, smtp, fresh_db, tmp_path):
    seed_small_ledger(fresh_db)
    out = airflow_env.test(
        "returns_operating_checks",
        timeout=300,
        extra_env={
            "AIRFLOW_CONN_SMTP_DEFAULT": smtp_uri(smtp.port),
            "AIRFLOW_CONN_RETURNS_DB": scratch_db.airflow_connection_json(fresh_db),
            "AIRFLOW_VAR_RETURNLEDGER_OBJECT_STORE": (tmp_path / "store").as_uri(),
        },
        # the run listed under 9 Oct covers [9 Oct 07:00, 10 Oct 07:00): dag.test() asks for it by
        # its interval end, and its "as of" is that end
        logical=(AS_OF + timedelta(hours=7)).isoformat(),
    )
    assert "STATE success" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    msgs = smtp.wait_for(4)
    assert sorted(r[0] for r, _ in msgs) == [
        "finance@localhost",
        "integration@localhost",
        "operations@localhost",
        "warehouse@localhost",
    ]
    # as of 10 Oct 07:00 the seeded sync (finished 9 Oct 00:09) is more than 26 h old: a second SYNC_STALLED
    expected = {
        **EXPECTED_DAILY,
        "integration": {"open": 2, "new": 2, "stalled_submissions": 1, "sync_late": 1},
    }
    for rcpt, msg in msgs:
        team = rcpt[0].split("@")[0]
        got = counts_of(msg)
        assert {k: got[k] for k in expected[team]} == expected[team], team
    assert sorted(p.name for p in (tmp_path / "store" / "digests").iterdir()) == [
        "daily-2026-10-10-finance.html",
        "daily-2026-10-10-integration.html",
        "daily-2026-10-10-operations.html",
        "daily-2026-10-10-warehouse.html",
        "daily-2026-10-10.json",
    ]
    with db.connect(fresh_db) as c:
        assert sorted(
            c.execute("SELECT subject_key FROM ledger.exception WHERE type = 'SYNC_STALLED'").fetchall()
        ) == [("submission:credit:R-2:1",), ("sync:returns_sync",)]


@pytest.mark.slow
def test_dag_test_of_weekly_review_mails_one_review_per_team(airflow_env, smtp, fresh_db, tmp_path):
    seed_small_ledger(fresh_db)
    week_end = datetime(2026, 10, 12, 7, tzinfo=UTC)
    out = airflow_env.test(
        "returns_weekly_review",
        timeout=300,
        extra_env={
            "AIRFLOW_CONN_SMTP_DEFAULT": smtp_uri(smtp.port),
            "AIRFLOW_CONN_RETURNS_DB": scratch_db.airflow_connection_json(fresh_db),
            "AIRFLOW_VAR_RETURNLEDGER_OBJECT_STORE": tmp_path.as_uri(),
        },
        logical=week_end.isoformat(),
    )
    assert "STATE success" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    msgs = smtp.wait_for(4)
    by_team = {rcpt[0].split("@")[0]: m for rcpt, m in msgs}
    assert sorted(by_team) == ["finance", "integration", "operations", "warehouse"]
    assert (
        by_team["operations"]["Subject"]
        == "[returnledger] weekly review to 2026-10-12 for operations: 2 opened, 0 resolved, 2 open"
    )
    assert counts_of(by_team["operations"])["sla_breached"] == 2
    assert counts_of(by_team["warehouse"])["open"] == 1
    # the weekly review only reads: no SYNC_STALLED raised
    with db.connect(fresh_db) as c:
        assert c.execute("SELECT count(*) FROM ledger.exception WHERE type = 'SYNC_STALLED'").fetchone() == (
            0,
        )


def test_month_end_notice_without_a_mail_server_is_one_error_line(monkeypatch):
    """No mail server anywhere: the finance notice logs one error naming recipient and cause, and never
    raises (the close run stays green, no traceback)."""
    import socket

    from returnledger.airflow import notifiers

    calls = []

    class Recorder:
        def error(self, msg, *args, **kw):
            calls.append((msg % args, kw))

        def __getattr__(self, name):  # other levels: not expected here
            return lambda *a, **k: calls.append((name, a, k))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens here once the socket is closed
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_uri(dead))
    monkeypatch.setattr(notifiers, "log", Recorder())
    notice = notifiers.finance_notice()
    notice.to = "finance@localhost"  # as rendered from the template
    notice.notify({})  # must not raise
    assert len(calls) == 1, calls
    message, kw = calls[0]
    assert "finance@localhost" in message and "refused" in message.lower(), message
    assert "exc_info" not in kw  # one line, no traceback


# --- one notifier class, and digests read back from the shared store (issue 24) ---------------------------


def test_every_mail_goes_through_one_notifier_class():
    """Failure alerts (task, DAG run), the month-end notice and the digests: one class, an SmtpNotifier."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    from returnledger.airflow import notifiers
    from returnledger.reports.digest_sections import Digest

    digest = Digest("finance", "s", "<p>x</p>", {}, "daily", AS_OF)
    made = [
        notifiers.failure_callbacks()[0],
        notifiers.dag_failure_callbacks()[0],
        notifiers.finance_notice(),
        notifiers.MailNotifier("digest", digest=digest),
    ]
    assert {type(n) for n in made} == {notifiers.MailNotifier}
    assert issubclass(notifiers.MailNotifier, SmtpNotifier)
    assert [n.about for n in made] == ["task_failure", "dag_failure", "month_end", "digest"]
    with pytest.raises(ValueError, match="about"):
        notifiers.MailNotifier("weekly_letter")
    with pytest.raises(ValueError, match="digest"):
        notifiers.MailNotifier("digest")


def test_one_notifier_instance_mails_each_failure_its_own_text(smtp, monkeypatch):
    """Airflow shares one callback instance between failures: the second mail says the second failure."""
    from returnledger.airflow.notifiers import failure_callbacks

    monkeypatch.setenv("AIRFLOW_VAR_RETURNLEDGER_ALERT_TO", "oncall@test.local")
    mail = failure_callbacks()[0]

    class Other(_TI):
        task_id, try_number = "confirm", 1

    mail({"ti": _TI(), "run_id": "r1", "ds": "2026-10-05", "exception": RuntimeError("first")})
    mail({"ti": Other(), "run_id": "r2", "ds": "2026-10-06", "exception": RuntimeError("second")})
    msgs = smtp.wait_for(2)
    assert [m["Subject"] for _, m in msgs] == [
        "[returnledger] returns_sync / push_credits failed for 2026-10-05",
        "[returnledger] returns_sync / confirm failed for 2026-10-06",
    ]
    assert "first" in html_of(msgs[0][1]) and "second" in html_of(msgs[1][1])
    assert "first" not in html_of(msgs[1][1])


def test_month_end_notice_says_period_as_of_and_totals(smtp, monkeypatch):
    """Built in Python from the close run's context: the period (param), the as-of (interval end) and the
    write_report XCom, its braces escaped, to Variable returnledger_finance_to."""
    from returnledger.airflow.notifiers import finance_notice

    monkeypatch.setenv("AIRFLOW_VAR_RETURNLEDGER_FINANCE_TO", "ap@test.local")

    class TI:
        def xcom_pull(self, task_ids):
            assert task_ids == "write_report"
            return {"period": "2026-10", "rows": 7, "total": {"credited_amount": "12.50"}}

    notice = finance_notice()
    notice(
        {
            "ti": TI(),
            "params": {"close_period": "2026-10"},
            "data_interval_end": datetime(2026, 11, 4, tzinfo=UTC),
        }
    )
    (rcpt, msg), *_ = smtp.wait_for(1)
    assert rcpt == ["ap@test.local"]
    assert msg["Subject"] == "[returnledger] month-end returns report 2026-10 is ready"
    body = html_of(msg)
    assert "<b>2026-10</b>" in body and "2026-11-04" in body
    assert "&#34;rows&#34;: 7" in body or "&quot;rows&quot;: 7" in body, body
    assert "{" not in body and "&#123;" in body


def test_send_reads_the_digest_from_the_store_not_from_where_build_ran(fresh_db, smtp, tmp_path):
    """build on one host, send on another: the summary's path is a folder send's host does not have; the
    store's digests folder is what send reads."""
    import shutil as sh

    from returnledger.airflow import notifiers as notify
    from returnledger.reports import digests as oc

    seed_small_ledger(fresh_db)
    host_a, store = tmp_path / "host-a", tmp_path / "store" / "digests"
    summaries = oc.build_and_write(fresh_db, as_of=AS_OF, kind="daily", out_dir=host_a)
    sh.copytree(host_a, store)  # what the store holds; host A's folder is not there for host B
    sh.rmtree(host_a)
    sent = [notify.send_digest(s, folder=store) for s in summaries]
    assert len(sent) == 4
    msgs = smtp.wait_for(4)
    by_to = {rcpt[0]: m for rcpt, m in msgs}
    assert html_of(by_to["operations@localhost"]).strip() == (
        (store / "daily-2026-10-10-operations.html").read_text().strip()
    )
