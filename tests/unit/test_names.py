"""Names that say what they hold (issue 23): no parameter a function ignores, no default that names the
wrong thing, no clock read where the run's moment is meant."""

from __future__ import annotations

import inspect

from returnledger.intake.orders import fetch_return_orders
from returnledger.reconciliation.findings import raise_found


def test_raise_found_takes_no_batch_id_it_would_ignore():
    # the run's batch reaches the raised rows through the reconciliation's query parameters ("batch")
    assert "batch_id" not in inspect.signature(raise_found).parameters


def test_fetching_return_orders_needs_the_runs_moment_and_batch():
    """A batch id defaulting to the system actor's name, and a moment defaulting to the clock, booked
    orders under a batch no run had and at a time no run was as of."""
    params = inspect.signature(fetch_return_orders).parameters
    assert params["batch_id"].default is inspect.Parameter.empty
    assert params["at"].default is inspect.Parameter.empty
