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
