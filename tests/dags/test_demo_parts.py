"""The demo's parts that need no Airflow run: which weekly reviews it runs, the mail sink,
quiet mail failures."""

from __future__ import annotations

import email
import logging
import smtplib
import socket
from datetime import date
from email.mime.text import MIMEText

import pytest

from returnledger_dev.demo.mail import MailSink
from returnledger_dev.demo.month import weekly_reviews


def test_weekly_reviews_are_the_weeks_the_scenario_covers():
    # small-month: Thu 1 Oct .. Tue 3 Nov. The week from Mon 28 Sep started before the ledger did, the week
    # from Mon 2 Nov is still running at the end: four reviews, each started on the Monday after its week.
    assert weekly_reviews(date(2026, 10, 1), date(2026, 11, 3)) == [
        date(2026, 10, 5),
        date(2026, 10, 12),
        date(2026, 10, 19),
        date(2026, 10, 26),
    ]
    assert weekly_reviews(date(2026, 10, 5), date(2026, 10, 11)) == [date(2026, 10, 5)]  # Monday to Sunday
    assert weekly_reviews(date(2026, 10, 5), date(2026, 10, 10)) == []  # Sunday's sync missing
    assert weekly_reviews(date(2026, 10, 6), date(2026, 10, 18)) == [date(2026, 10, 12)]


def _send(port: int, to: str, subject: str, headers: dict | None = None) -> None:
    msg = MIMEText("<p>hello</p>", "html")
    msg["Subject"], msg["From"], msg["To"] = subject, "returnledger@localhost", to
    for k, v in (headers or {}).items():
        msg[k] = v
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("returnledger@localhost", [to], msg.as_string())


def test_mail_sink_writes_every_message_as_an_eml_file(tmp_path):
    with MailSink(tmp_path / "mail") as sink:
        _send(
            sink.port,
            "finance@localhost",
            "[returnledger] daily digest 2026-10-06 for finance: 1 open",
            {"X-Returnledger-Digest": "daily:finance"},
        )
        _send(
            sink.port,
            "operations@localhost",
            "[returnledger] weekly review to 2026-10-12 for operations",
            {"X-Returnledger-Digest": "weekly:operations"},
        )
        _send(sink.port, "finance@localhost", "[returnledger] month-end returns report 2026-10 is ready")
        _send(
            sink.port,
            "integration@localhost",
            "[returnledger] returns_sync / push_credits failed for 2026-10-05",
        )
    names = sorted(p.name for p in (tmp_path / "mail").iterdir())
    assert names == [
        "0001-daily-2026-10-06-finance.eml",
        "0002-weekly-2026-10-12-operations.eml",
        "0003-month-end-returns-report-2026-10-is-ready.eml",
        "0004-returns-sync-push-credits-failed-for-2026-10-05.eml",
    ]
    msg = email.message_from_bytes((tmp_path / "mail" / names[0]).read_bytes())
    assert msg["To"] == "finance@localhost" and msg["X-Returnledger-Digest"] == "daily:finance"
    assert sink.summary() == {
        "total": 4,
        "by_kind": {"daily digest": 1, "failure alert": 1, "month-end notice": 1, "weekly review": 1},
        "by_recipient": {"finance@localhost": 2, "integration@localhost": 1, "operations@localhost": 1},
    }
    with pytest.raises(ConnectionRefusedError):  # stopped: nothing listens any more
        socket.create_connection(("127.0.0.1", sink.port), timeout=5).close()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_failure_mail_without_a_mail_server_is_one_error_line_without_traceback(monkeypatch, capsys):
    from returnledger.airflow.notifiers import failure_callbacks

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DEFAULT",
        f"smtp://127.0.0.1:{port}?disable_tls=true&disable_ssl=true&retry_limit=0&timeout=2",
    )

    class TI:
        dag_id, task_id, run_id, try_number = "returns_reconciliation", "write_report", "r", 1

    logger, handler = logging.getLogger("returnledger.airflow.notifiers"), _Records()
    logger.disabled = False  # Airflow's logging set-up may have disabled it
    logger.addHandler(handler)
    try:
        for cb in failure_callbacks():
            cb({"ti": TI(), "run_id": "r", "exception": ValueError("x")})  # must not raise
    finally:
        logger.removeHandler(handler)
    mail = [r for r in handler.records if "could not send the task failure mail" in r.getMessage()]
    assert len(mail) == 1 and mail[0].levelno == logging.ERROR
    assert mail[0].exc_info is None
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    assert "integration@localhost" in mail[0].getMessage()  # says to whom it was meant


QUARTER = {  # a run over three months, closed on the 3rd of each next month (generate.py --months 3)
    "from": "2026-10-01",
    "to": "2027-01-03",
    "close_period": "2026-12",
    "closes": [
        {"period": "2026-10", "on": "2026-11-03"},
        {"period": "2026-11", "on": "2026-12-03"},
        {"period": "2026-12", "on": "2027-01-03"},
    ],
}


def test_each_close_of_the_scenario_runs_on_its_day():
    from returnledger_dev.demo.month import closes_by_day

    assert closes_by_day(QUARTER, date(2026, 10, 1), date(2027, 1, 3)) == {
        date(2026, 11, 3): ["2026-10"],
        date(2026, 12, 3): ["2026-11"],
        date(2027, 1, 3): ["2026-12"],
    }
    # without `closes`: one close of close_period on the last day
    one = {"from": "2026-10-01", "to": "2026-11-03", "close_period": "2026-10"}
    assert closes_by_day(one, date(2026, 10, 1), date(2026, 11, 3)) == {date(2026, 11, 3): ["2026-10"]}
    # a rerun of some days makes only the closes of those days
    assert closes_by_day(QUARTER, date(2026, 12, 1), date(2026, 12, 31)) == {date(2026, 12, 3): ["2026-11"]}
    assert closes_by_day(one, date(2026, 10, 5), date(2026, 10, 12)) == {}


def test_the_screen_line_of_a_close_day_names_the_period_closed():
    from returnledger_dev.demo.outputs import day_line

    line = day_line(
        date(2026, 12, 3),
        (10, 1, 2),
        digests=4,
        weekly=None,
        operator=0,
        seconds=12.0,
        closes=[("2026-11", True)],
    )
    assert line.startswith("  2026-12-03 Thu  events    10") and "closed 2026-11" in line
    failed = day_line(
        date(2026, 12, 3),
        (0, 0, 0),
        digests=0,
        weekly=None,
        operator=0,
        seconds=1,
        closes=[("2026-11", False)],
    )
    assert "closed 2026-11 (report NOT written)" in failed
    assert "closed" not in day_line(
        date(2026, 12, 2), (0, 0, 0), digests=0, weekly=None, operator=0, seconds=1
    )


def test_each_close_keeps_its_report_and_the_top_level_one_is_the_last(tmp_path):
    from returnledger_dev.demo.outputs import publish_close

    for period in ("2026-10", "2026-11"):
        folder = tmp_path / "closes" / period
        folder.mkdir(parents=True)
        (folder / "month_end_report.csv").write_text(f"report {period}\n")
        (folder / "month_end_report.html").write_text(f"<p>{period}</p>")
        assert publish_close(tmp_path, period)
    assert (tmp_path / "month_end_report.csv").read_text() == "report 2026-11\n"
    assert (tmp_path / "closes" / "2026-10" / "month_end_report.csv").read_text() == "report 2026-10\n"
    assert not publish_close(tmp_path, "2026-12")  # that close wrote nothing


def test_cluster_demo_runs_scenario_days_after_this_machines_clock():
    """Airflow backfills only runs whose data interval has ended, and its scheduler starts no run before its
    run_after: a scenario that reaches past the machine's clock (a quarter from October on 4 December) has
    its later days created as runs that may start now."""
    from datetime import UTC, datetime

    from returnledger_dev.cluster.demo import backfill_plan, day_run_body

    now = datetime(2026, 12, 4, 9, 30, tzinfo=UTC)
    days = [date(2026, 10, 8), date(2026, 11, 15)]  # operator actions
    closes = [date(2026, 11, 3), date(2026, 12, 3), date(2027, 1, 3)]
    assert backfill_plan(date(2026, 10, 1), date(2027, 1, 3), days, closes, now) == [
        (date(2026, 10, 1), date(2026, 10, 7), True),
        (date(2026, 10, 8), date(2026, 11, 3), True),  # the close of October follows its last day
        (date(2026, 11, 4), date(2026, 11, 14), True),
        (date(2026, 11, 15), date(2026, 12, 3), True),
        (date(2026, 12, 4), date(2027, 1, 3), False),  # 4 December has not ended yet: runs, not a backfill
    ]
    cut = backfill_plan(date(2026, 11, 20), date(2026, 12, 10), [], [], now)
    assert cut == [
        (date(2026, 11, 20), date(2026, 12, 3), True),
        (date(2026, 12, 4), date(2026, 12, 10), False),
    ]

    past = day_run_body(date(2026, 10, 5), None, now)
    assert (past["logical_date"], past["data_interval_end"], past["run_after"]) == (
        "2026-10-05T00:00:00Z",
        "2026-10-06T00:00:00Z",
        "2026-10-06T00:00:00Z",
    )
    future = day_run_body(date(2027, 1, 3), {"close_period": "2026-12"}, now)
    assert future["dag_run_id"] == "close__2026-12__2027-01-03"
    assert (future["data_interval_start"], future["run_after"]) == (
        "2027-01-03T00:00:00Z",
        "2026-12-04T09:30:00Z",
    )


def test_cluster_demo_refuses_a_scenario_that_ends_after_this_machines_clock():
    """The scheduler runs no task whose logical date is after the clock (Airflow's 'Logical Date' dependency):
    the cluster demo says so before it starts, instead of waiting on a run that never starts."""
    from datetime import UTC, datetime

    from returnledger_dev.cluster.demo import future_days_problem

    now = datetime(2026, 12, 4, 9, 30, tzinfo=UTC)
    assert future_days_problem(date(2026, 12, 4), now) is None  # today's run may start (run_after: now)
    problem = future_days_problem(date(2027, 1, 3), now)
    assert problem is not None
    assert problem.startswith(
        "the scenario runs to 2027-01-03, but this machine's clock is at 2026-12-04 09:30"
    )
    assert "2026-12-05" in problem and "make demo" in problem


def test_cluster_demo_counts_amazon_submissions_not_token_requests(tmp_path):
    """The rerun check of make cluster-demo (a cleared push_credits sends Amazon nothing new) counts the
    submissions: credit notes and inventory updates. A token request (POST /auth/o2/token, made whenever a
    worker's access token has expired) is no submission: counted as one, it failed a generated month's
    rerun with 0 new credit notes."""
    import json

    from returnledger_dev.cluster.demo import amazon_submissions

    at = "2026-10-18T10:00:00.000+00:00"
    rows = [
        ("POST", "/auth/o2/token"),
        ("POST", "/vendor/payments/v1/invoices"),
        ("GET", "/vendor/transactions/v1/transactions/t-1"),
        ("POST", "/vendor/directFulfillment/inventory/v1/warehouses/W1/items"),
        ("POST", "/_sandbox/dump"),
        ("POST", "/auth/o2/token"),
    ]
    (tmp_path / "amazon_requests.jsonl").write_text(
        "".join(json.dumps({"at": at, "method": m, "path": p, "status": 200}) + "\n" for m, p in rows)
    )
    assert amazon_submissions(tmp_path) == 2
    assert amazon_submissions(tmp_path, "/invoices") == 1
    assert amazon_submissions(tmp_path / "none") == 0
