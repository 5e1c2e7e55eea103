"""The workers' Celery settings: Airflow's own, plus a preload that never stops a worker from starting."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("airflow.providers.celery")


def test_settings_are_airflows_and_the_preload_imports_what_the_tasks_need():
    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

    from returnledger.airflow import celery

    assert celery.CELERY_CONFIG == DEFAULT_CELERY_CONFIG
    took = celery.preload(("json", "great_expectations"))
    assert set(took) == {"json", "great_expectations"} and "great_expectations" in sys.modules


def test_a_library_that_fails_to_import_is_skipped_and_logged(caplog):
    from returnledger.airflow import celery

    took = celery.preload(("returnledger_no_such_library", "json"))
    assert list(took) == ["json"]
    assert "preloading returnledger_no_such_library failed" in caplog.text
