"""What every returnledger DAG shares: task defaults, the pool and the Variables (the Assets are in
returnledger.airflow.assets).

Variables (set in the UI, by ``AIRFLOW_VAR_<NAME>`` or from a secrets backend; airflow_settings.yaml has
the local values). Each has a default under the data folder ``$RETURNLEDGER_HOME/.local`` (the image sets
``RETURNLEDGER_HOME=/opt/returnledger``), meant for a single machine; a deployment sets them:
- ``returnledger_object_store``: the one object store for every file tasks share (digests, validation
  results, exports, month-end reports, Data Docs; returnledger.store.objects has the layout):
  ``s3://<bucket>/<prefix>`` through ``aws_default`` in production, default ``file://<data>/store``;
- ``returnledger_export_base``: only where Amazon's exports arrive somewhere else than the store's
  ``exports/`` (``file://`` or ``s3://``), default empty (the store's);
- ``returnledger_report_base``: only where month-end reports go somewhere else than the store's
  ``reports/``, default empty (the store's).
The mail addresses are Variables too (``returnledger_alert_to``, ``returnledger_team_emails``);
returnledger.airflow.notifiers documents them. ``variable`` is the one reader of them all.
"""

from __future__ import annotations

import os
from datetime import timedelta

#: the pool every SP-API task runs in (its slots keep the vendor operations under Amazon's rate)
AMAZON_POOL = "amazon_sp_api"
#: no task may hold a worker (or the amazon_sp_api pool) longer than this; the push and confirm steps'
#: circuit breakers and the clients' retry budgets end well before it: an outage fails the task
#: (AmazonOutage), retried by Airflow, with the work PENDING or SUBMITTED for the retry or the next run
TASK_TIMEOUT = timedelta(minutes=45)


def default_args(owner: str = "returnledger") -> dict:
    """default_args every DAG of the project uses: owner, retries, failure notifiers, a hard time limit."""
    from returnledger.airflow.notifiers import failure_callbacks

    return {
        "owner": owner,
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": True,
        "on_failure_callback": failure_callbacks(),
        "execution_timeout": TASK_TIMEOUT,
    }


#: who hears about failed tasks and DAG runs when ``returnledger_alert_to`` is not set
DEFAULT_ALERT_TO = "integration@localhost"


def _variable_defaults() -> dict[str, str]:
    from returnledger.store.db import local_dir

    data = local_dir()
    return {
        "returnledger_alert_to": DEFAULT_ALERT_TO,
        "returnledger_team_emails": "{}",
        "returnledger_finance_to": "finance@localhost",
        "returnledger_object_store": f"file://{data}/store",
        "returnledger_export_base": "",
        "returnledger_report_base": "",
    }


def variable(name: str, *, quiet: bool = False) -> str:
    """One of the Variables above: its value, else its documented default (read at run time only).

    ``quiet``: where Airflow cannot answer (a failure callback outside a task, tests, the CLI), read
    ``AIRFLOW_VAR_<NAME>`` or the default instead of raising; a mail about a failure must still go out.
    """
    defaults = _variable_defaults()
    if name not in defaults:
        raise KeyError(f"{name} is not one of the Variables returnledger.airflow.defaults documents")
    env = os.environ.get(f"AIRFLOW_VAR_{name.upper()}")
    if quiet and env is not None:
        return env
    try:
        from airflow.sdk import Variable

        return Variable.get(name, default=defaults[name])
    except Exception:
        if not quiet:
            raise
        return defaults[name]
