"""Failure notifications for every task and DAG of the project.

Mail goes through Airflow's SmtpNotifier on the ``smtp_default`` connection
to the owner team's address (Airflow Variable ``returnledger_alert_to``,
default ``integration@localhost``). A notifier that cannot send only logs:
an unreachable mail server must never fail a task.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

SUBJECT = "[returnledger] {{ dag.dag_id }} / {{ ti.task_id }} failed for {{ ds }}"
BODY = """
<p>Task <b>{{ ti.task_id }}</b> of DAG <b>{{ dag.dag_id }}</b> failed for run {{ run_id }}
(try {{ ti.try_number }}).</p>
<p>Exception: <pre>{{ exception }}</pre></p>
<p>Rerunning is safe: every step of returnledger is idempotent. Clear the task in the Airflow UI once
the cause is fixed.</p>
"""


def failure_callbacks(to: str = "{{ var.value.get('returnledger_alert_to', 'integration@localhost') }}") -> list:
    """Callbacks for ``on_failure_callback`` of tasks and DAGs (import lazily: Airflow only)."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    return [SmtpNotifier(to=to, subject=SUBJECT, html_content=BODY, smtp_conn_id="smtp_default"),
            log_failure]


def log_failure(context) -> None:
    """Always-on notifier: a structured log line that monitoring can pick up."""
    ti = context.get("ti")
    log.error("returnledger task failed: dag=%s task=%s run=%s exception=%s",
              getattr(ti, "dag_id", None), getattr(ti, "task_id", None), context.get("run_id"),
              context.get("exception"))
