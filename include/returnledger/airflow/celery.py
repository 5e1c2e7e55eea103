"""Celery settings of the workers: Airflow's own, plus the heavy libraries loaded once per worker.

On Linux, Airflow 3 runs each task in a process forked from the Celery worker, so whatever the worker has
imported is already there in every task. ``great_expectations`` alone takes about 6 s to import on a
2-core machine, and every ``validate`` task paid it; pandas, python-amazon-sp-api and the HTTP and
database clients add about 1.5 s more across the other tasks. Importing them once, when the worker
starts (Celery's ``worker_init``, in the worker's main process, before its pool forks), takes that off
every daily run. Point ``[celery] celery_config_options`` here (the compose file and ``make cluster`` do);
the scheduler reads the same settings but never starts a worker, so it imports none of this.

Only third-party libraries are preloaded: the project's own modules are imported by each task as
before, so a changed ``include/`` needs no worker restart.
"""

from __future__ import annotations

import importlib
import logging
import os
import time

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import worker_init

log = logging.getLogger(__name__)

#: what the tasks import lazily (screening, the Amazon client, the ReBound client, the ledger)
PRELOAD = ("great_expectations", "pandas", "sp_api.api", "httpx", "tenacity", "psycopg", "jinja2")

CELERY_CONFIG = dict(DEFAULT_CELERY_CONFIG)


def preload(modules=PRELOAD) -> dict[str, float]:
    """Import ``modules``; returns the seconds each took (a module that fails to import is skipped and
    logged: the task that needs it will raise the real error)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    took = {}
    for name in modules:
        t0 = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception:  # a worker must start even if a library is broken
            log.exception("preloading %s failed", name)
            continue
        took[name] = round(time.perf_counter() - t0, 2)
    return took


@worker_init.connect
def _preload_in_worker(**_) -> None:
    log.warning("returnledger: preloaded in the Celery worker (seconds each): %s", preload())
