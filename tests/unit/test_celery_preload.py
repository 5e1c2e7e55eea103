"""The workers' Celery settings: Airflow's own, plus a preload that never stops a worker from starting."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("airflow.providers.celery")


def test_the_settings_airflow_is_pointed_at_are_its_own_and_the_preload_imports_what_the_tasks_need(
    monkeypatch,
):
    """The compose file and ``make cluster`` point ``[celery] celery_config_options`` at this module: the
    name must import (a typo makes every worker fail to start) and give Airflow's settings unchanged."""
    import re
    from pathlib import Path

    from airflow.configuration import conf
    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

    from returnledger_dev.cluster.spec import CELERY_CONFIG_OPTIONS

    compose = (Path(__file__).resolve().parents[2] / "docker-compose.yaml").read_text()
    (named,) = re.findall(r"AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS:\s*(\S+)", compose)
    assert named == CELERY_CONFIG_OPTIONS
    monkeypatch.setenv("AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS", named)
    config = conf.getimport("celery", "celery_config_options")  # as Airflow's Celery executor reads it
    assert config is not DEFAULT_CELERY_CONFIG and config == DEFAULT_CELERY_CONFIG
    from returnledger.airflow import celery

    took = celery.preload(("json", "great_expectations"))
    assert set(took) == {"json", "great_expectations"} and "great_expectations" in sys.modules


def test_a_worker_starting_runs_the_preload(monkeypatch):
    """Celery's worker_init reaches the preload (importing the settings module connects it)."""
    from celery.signals import worker_init

    from returnledger.airflow import celery

    ran = []
    monkeypatch.setattr(celery, "preload", lambda *a: ran.append(a) or {})
    worker_init.send(sender=None)
    assert ran == [()]


def test_every_preloaded_library_is_installed():
    """preload() skips a library that fails to import, so a misspelt or missing one would pass unseen."""
    import importlib.util

    from returnledger.airflow import celery

    missing = [m for m in celery.PRELOAD if importlib.util.find_spec(m) is None]
    assert not missing, f"PRELOAD names libraries that are not installed: {missing}"


def test_a_library_that_fails_to_import_is_skipped_and_logged(caplog):
    from returnledger.airflow import celery

    took = celery.preload(("returnledger_no_such_library", "json"))
    assert list(took) == ["json"]
    assert "preloading returnledger_no_such_library failed" in caplog.text
