"""Which month a reconciliation run checks, and the keys its writes carry
(returnledger.reconciliation.period)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from returnledger.reconciliation.period import recon_window

UTC = UTC


def test_a_daily_run_checks_the_month_of_its_day():
    w = recon_window(datetime(2026, 10, 31, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
    assert (w.period, w.close, w.result_key) == ("2026-10", False, "daily:2026-10")
    assert w.batch_id == "returns_reconciliation:daily:2026-10:2026-11-01T00:00"
    assert w.as_dict()["as_of"] == "2026-11-01T00:00:00+00:00"


def test_a_run_without_an_interval_checks_the_day_that_just_ended():
    moment = datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # asset-triggered: start == end
    w = recon_window(moment, moment)
    assert (w.period, w.result_key) == ("2026-10", "daily:2026-10")


def test_a_close_run_replaces_the_period_as_of_its_end():
    w = recon_window(datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 4, tzinfo=UTC), " 2026-10 ")
    assert (w.period, w.close, w.result_key) == ("2026-10", True, "2026-10")
    assert w.batch_id == "returns_reconciliation:close:2026-10:2026-11-04T00:00"


def test_a_bad_close_period_is_refused():
    with pytest.raises(ValueError):
        recon_window(datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 4, tzinfo=UTC), "2026-13")
