"""Tests that sign console tokens each set their own ``AIRFLOW__API_AUTH__JWT_SECRET``, but Airflow's auth
manager caches its token signer and validator per class (``functools.cache``): without the conftest's
reset, the validator built under the first test's secret refused the next test's tokens ("Invalid JWT
token": test_console_finance_runs after test_console_auth). The two tests below run in this order."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("airflow.api_fastapi.auth.managers.simple.simple_auth_manager")


def _sign_and_check(monkeypatch, secret: str, **valid_for) -> str:
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.models.revoked_token import RevokedToken

    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secret + "-not-for-production-" + "x" * 40)
    monkeypatch.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti, **kw: False))
    manager = SimpleAuthManager()
    token = manager.generate_jwt(SimpleAuthManagerUser(username="vera", role="VIEWER"), **valid_for)
    return asyncio.run(manager.get_user_from_token(token)).get_name()


def test_a_first_secret_signs_and_validates(monkeypatch):
    # as test_console_auth: a token valid for a given time (its own signer; the validator is shared)
    assert _sign_and_check(monkeypatch, "first", expiration_time_in_seconds=600) == "vera"


def test_a_later_secret_signs_and_validates_too(monkeypatch):
    # as test_console_finance_runs: the default validity, signed under this test's secret
    assert _sign_and_check(monkeypatch, "second") == "vera"
