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

from airflow.providers.smtp.notifications.smtp import SmtpNotifier

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


class MailNotifier(SmtpNotifier):
    """The one notifier of every mail returnledger sends, through ``smtp_default``: ``about`` says what the
    mail is, and so who gets it and what it says, built in Python from the context when it goes out:

    - ``"task_failure"`` / ``"dag_failure"``: a failed task / DAG run, to ``returnledger_alert_to``;
    - ``"month_end"``: the month-end report is written (success callback of ``write_report``), its totals,
      to ``returnledger_finance_to``;
    - ``"digest"``: one operating digest (``digest=``, a reports.digest_sections.Digest) to its team.

    Nothing is rendered by Jinja (``template_fields`` is empty; the bodies are escaped and brace-free), so
    one instance serves every call and no failure's text is carried into the next. A failure alert or the
    month-end notice that cannot be sent is one error line (no traceback, never a failed task: what it was
    about is logged or already done); a digest that cannot be sent raises, so its mapped task retries.
    """

    # BaseNotifier declares Sequence[str]; SmtpNotifier's un-annotated tuple makes mypy infer its 11 names
    template_fields = ()  # type: ignore[assignment]
    ABOUT = ("task_failure", "dag_failure", "month_end", "digest")

    def __init__(self, about: str, *, to: str | None = None, digest=None, smtp_conn_id: str = SMTP_CONN_ID):
        if about not in self.ABOUT:
            raise ValueError(f"about must be one of {self.ABOUT}, not {about!r}")
        if (about == "digest") != (digest is not None):
            raise ValueError("a digest mail needs its digest, and only a digest mail takes one")
        super().__init__(to=to or "", smtp_conn_id=smtp_conn_id)
        self.about, self.fixed_to, self.digest = about, to, digest
        self.__name__ = f"returnledger_{about}_mail"

    def compose(self, context) -> tuple[str, str, str, dict | None]:
        """Recipient, subject, HTML body and extra headers of this mail for ``context``."""
        if self.about in ("task_failure", "dag_failure"):
            subject, body = failure_message(context, self.about.split("_")[0])
            to = self.fixed_to or variable("returnledger_alert_to", quiet=True) or DEFAULT_ALERT_TO
            return to, subject, body, None
        if self.about == "month_end":
            return (
                self.fixed_to or variable("returnledger_finance_to", quiet=True),
                *month_end_message(context),
                None,
            )
        d = self.digest
        headers = {"X-Returnledger-Digest": f"{d.kind}:{d.owner}"}
        return self.fixed_to or team_address(d.owner), d.subject, d.html, headers

    def render_template_fields(self, context, jinja_env=None) -> None:
        """Nothing to render: every field is built in Python by ``compose``. (A DAG-level callback gets a
        SerializedDAG, which has no Jinja environment: BaseNotifier's rendering would raise there.)"""

    def notify(self, context) -> None:
        to = self.fixed_to
        try:
            to, self.subject, self.html_content, self.custom_headers = self.compose(context)
            self.to, self.from_email = to, _from_email(self.smtp_conn_id)
            super().notify(context)
        except Exception as e:
            if self.about == "digest":
                raise  # the send task fails and retries: the team must get its digest
            # an error, not a traceback: no mail server (connection refused, timeout) is an operating
            # condition, and what this mail was about is logged by log_failure / Airflow, or already done
            log.error(
                "returnledger: could not send the %s mail to %s through connection %s: %s: %s",
                self.about.replace("_", " "),
                to or "?",
                self.smtp_conn_id,
                type(e).__name__,
                e,
            )

    def __repr__(self) -> str:
        return f"MailNotifier({self.about!r}, to={self.fixed_to!r})"


def failure_callbacks(to: str | None = None) -> list:
    """Callbacks for a task's ``on_failure_callback`` (``default_args``): a mail and a log line."""
    return [MailNotifier("task_failure", to=to), log_failure]


def dag_failure_callbacks(to: str | None = None) -> list:
    """Callbacks for a DAG's ``on_failure_callback`` (the ``@dag(...)`` argument): a mail and a log line."""
    return [MailNotifier("dag_failure", to=to), log_dag_failure]


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


def send_digest(summary: dict, context=None, folder=None) -> str:
    """Mail one digest written by reports.digests.write_digests (its summary dict), read back from
    ``folder`` (the object store's digests folder; else the summary's path); returns the address."""
    from returnledger.reports.digests import digest_from_file

    digest = digest_from_file(summary, folder)
    to = team_address(digest.owner)
    notifier = MailNotifier("digest", to=to, digest=digest)
    if context is None:
        notifier.notify({})
    else:
        notifier(context)
    return to


def finance_notice(smtp_conn_id: str = SMTP_CONN_ID) -> MailNotifier:
    """The month-end notice to finance (success callback of ``write_report``): a MailNotifier."""
    return MailNotifier("month_end", smtp_conn_id=smtp_conn_id)


def month_end_message(context) -> tuple[str, str]:
    """Subject and HTML body of the month-end notice: the period, its as-of and the report's totals (the
    ``write_report`` task's XCom), escaped and brace-free."""
    params = context.get("params") or {}
    period = params.get("close_period") or "?"
    ti = context.get("ti")
    totals = None
    if ti is not None:
        try:
            totals = ti.xcom_pull(task_ids="write_report")
        except Exception as e:  # the notice still goes out, without the totals
            log.warning("returnledger: the month-end notice has no totals: %s: %s", type(e).__name__, e)
    subject = f"[returnledger] month-end returns report {period} is ready"
    body = render(
        "month_end_mail.html",
        mail=True,
        period=period,
        as_of=context.get("data_interval_end") or "?",
        totals=json.dumps(totals, default=str, sort_keys=True) if totals is not None else None,
    )
    return subject, body
