"""Mail from returnledger's DAGs: failure notifications, the operating digests, the month-end notice.

Everything goes through Airflow's SmtpNotifier on the ``smtp_default``
connection. Addresses are configuration (Airflow Variables), resolved when a
mail is sent, never at parse time:
- ``returnledger_alert_to``: who hears about failed tasks and DAG runs
  (default ``integration@localhost``);
- ``returnledger_team_emails``: JSON ``{"finance": "finance@example.com", ...}``
  for the digests (default ``<team>@localhost``);
- the sender is the connection's ``from_email`` extra, else ``returnledger@localhost``.

A failure notifier that cannot send only logs an error (one line, no
traceback): an unreachable mail server must never hide the original failure.
Messages are built from the context in Python and rendered through
returnledger.render (templates/failure_mail.html; task-level and DAG-level
callbacks get different contexts; a DAG run that failed has no single
``exception``), so nothing depends on Airflow's Jinja finding keys.
"""

from __future__ import annotations

import json
import logging

from returnledger.airflow.defaults import DEFAULT_ALERT_TO, variable
from returnledger.render import render

log = logging.getLogger(__name__)

SMTP_CONN_ID = "smtp_default"
DEFAULT_FROM = "returnledger@localhost"


def _from_email(smtp_conn_id: str) -> str:
    try:
        from airflow.sdk import BaseHook

        return (BaseHook.get_connection(smtp_conn_id).extra_dejson or {}).get("from_email") or DEFAULT_FROM
    except Exception:
        return DEFAULT_FROM


def team_address(owner: str) -> str:
    """Mail address of an owner team (Variable ``returnledger_team_emails``, else ``<team>@localhost``)."""
    raw = variable("returnledger_team_emails", quiet=True)
    if raw:
        try:
            mapping = json.loads(raw)
            if owner in mapping:
                return mapping[owner]
        except ValueError:
            log.warning("Variable returnledger_team_emails is not JSON; using the default address")
    return f"{owner}@localhost"


def failure_message(context, level: str) -> tuple[str, str]:
    """Subject and HTML body for a failed task (level 'task') or a failed DAG run (level 'dag')."""
    ti = context.get("ti") or context.get("task_instance")
    dag = context.get("dag")
    dag_id = getattr(dag, "dag_id", None) or getattr(ti, "dag_id", None) or "?"
    run_id = context.get("run_id") or getattr(ti, "run_id", None) or "?"
    when = context.get("ds") or run_id
    task_id = getattr(ti, "task_id", None)
    if level == "dag":
        subject = f"[returnledger] DAG {dag_id} failed for {when}"
    else:
        subject = f"[returnledger] {dag_id} / {task_id or '?'} failed for {when}"
    # escaped and brace-free (mail=True): SmtpNotifier renders its fields with Jinja when it is called
    body = render(
        "failure_mail.html",
        mail=True,
        level=level,
        run_id=run_id,
        dag_id=dag_id,
        task_id=task_id,
        reason=context.get("reason") or "failed",
        try_number=getattr(ti, "try_number", "?"),
        exception=context.get("exception"),
    )
    return subject, body


class FailureNotifier:
    """``on_failure_callback`` for tasks (level='task') and DAG runs (level='dag'): mails the alert address.

    A fresh SmtpNotifier per failure: Airflow renders notifier fields in place, so one shared instance
    would carry the first failure's text into the next.
    """

    def __init__(self, level: str = "task", to: str | None = None, smtp_conn_id: str = SMTP_CONN_ID):
        if level not in ("task", "dag"):
            raise ValueError("level must be 'task' or 'dag'")
        self.level, self.to, self.smtp_conn_id = level, to, smtp_conn_id
        self.__name__ = f"returnledger_{level}_failure_mail"

    def __call__(self, context) -> None:
        to = self.to
        try:
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            subject, body = failure_message(context, self.level)
            to = to or variable("returnledger_alert_to", quiet=True) or DEFAULT_ALERT_TO
            SmtpNotifier(
                to=to,
                from_email=_from_email(self.smtp_conn_id),
                subject=subject,
                html_content=body,
                smtp_conn_id=self.smtp_conn_id,
            ).notify(context)
        except Exception as e:
            # an error, not a traceback: no mail server (connection refused, timeout) is an operating
            # condition, and the failure this mail was about is logged by log_failure / Airflow anyway
            log.error(
                "returnledger: could not send the %s failure mail to %s through connection %s: %s: %s",
                self.level,
                to or "?",
                self.smtp_conn_id,
                type(e).__name__,
                e,
            )

    def __repr__(self) -> str:
        return f"FailureNotifier(level={self.level!r}, to={self.to!r})"


def failure_callbacks(to: str | None = None) -> list:
    """Callbacks for a task's ``on_failure_callback`` (``default_args``): a mail and a log line."""
    return [FailureNotifier("task", to), log_failure]


def dag_failure_callbacks(to: str | None = None) -> list:
    """Callbacks for a DAG's ``on_failure_callback`` (the ``@dag(...)`` argument): a mail and a log line."""
    return [FailureNotifier("dag", to), log_dag_failure]


def log_failure(context) -> None:
    """Always-on notifier: a structured log line that monitoring can pick up."""
    ti = context.get("ti")
    log.error(
        "returnledger task failed: dag=%s task=%s run=%s exception=%s",
        getattr(ti, "dag_id", None),
        getattr(ti, "task_id", None),
        context.get("run_id"),
        context.get("exception"),
    )


def log_dag_failure(context) -> None:
    dag = context.get("dag")
    log.error(
        "returnledger DAG run failed: dag=%s run=%s reason=%s",
        getattr(dag, "dag_id", None),
        context.get("run_id"),
        context.get("reason"),
    )


def digest_notifier(digest, to: str | None = None, smtp_conn_id: str = SMTP_CONN_ID):
    """An SmtpNotifier that mails one operating digest (returnledger.reports.digests.Digest) to its team.

    Call it with a context (``notifier(context)``) or ``notifier.notify({})`` outside a task. The digest's
    HTML carries no Jinja markers (braces are entities), so Airflow's rendering leaves it as built.
    """
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    return SmtpNotifier(
        to=to or team_address(digest.owner),
        from_email=_from_email(smtp_conn_id),
        subject=digest.subject,
        html_content=digest.html,
        smtp_conn_id=smtp_conn_id,
        custom_headers={"X-Returnledger-Digest": f"{digest.kind}:{digest.owner}"},
    )


def send_digest(summary: dict, context=None) -> str:
    """Mail one digest written by reports.digests.write_digests (its summary dict); returns the address."""
    from returnledger.reports.digests import digest_from_file

    digest = digest_from_file(summary)
    to = team_address(digest.owner)
    notifier = digest_notifier(digest, to=to)
    if context is None:
        notifier.notify({})
    else:
        notifier(context)  # renders template fields (nothing to render: the digest has no Jinja markers)
    return to


def finance_notice(smtp_conn_id: str = SMTP_CONN_ID):
    """Mail finance that the month-end report is written, with its totals (success callback of write_report).

    A mail that cannot be sent (no mail server, refused login) is one error line in the task log naming the
    recipient and the cause, never a traceback and never a failed close run: the report is already written.
    """
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    class FinanceNotice(SmtpNotifier):
        def notify(self, context):
            try:
                super().notify(context)
            except Exception as e:
                log.error(
                    "returnledger: the month-end notice to %s was not sent through connection %s: %s: %s",
                    self.to,
                    self.smtp_conn_id,
                    type(e).__name__,
                    e,
                )

    return FinanceNotice(
        to="{{ var.value.get('returnledger_finance_to', 'finance@localhost') }}",
        subject="[returnledger] month-end returns report {{ params.close_period }} is ready",
        html_content=(
            "<p>The returns month-end report for <b>{{ params.close_period }}</b> is written "
            "(as of {{ data_interval_end }}).</p>"
            "<p>Totals: <pre>{{ ti.xcom_pull(task_ids='write_report') | tojson }}</pre></p>"
            "<p>CREDIT_MISSING, CREDIT_MISMATCH, CREDIT_REJECTED and DARK_RETURN rows need action; "
            "see docs/reconciliation.md.</p>"
        ),
        smtp_conn_id=smtp_conn_id,
    )
