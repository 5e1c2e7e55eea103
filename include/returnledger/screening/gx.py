"""The one Great Expectations wrapper: an ephemeral context, and a suite run over a pandas DataFrame.

Both GX gates of the project go through here: the events suite (returnledger.screening.suite) and the
Amazon Vendor Central export check (returnledger.reconciliation.amazon_export). GX costs seconds to
import, so nothing here imports it before it is called.
"""

from __future__ import annotations

import logging
import os
from typing import Any


def import_gx() -> Any:
    """great_expectations, with its analytics off and its import-time log noise quiet."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations._docs_decorators").setLevel(logging.WARNING)
    import great_expectations as gx

    return gx


def ephemeral_context() -> Any:
    """A GX context that lives in this process only (suites need an active one), progress bars off so
    task logs stay readable."""
    gx = import_gx()
    ctx = gx.get_context(mode="ephemeral")
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


def run_suite(
    ctx: Any, df: Any, suite: Any, *, source: str, asset: str, batch: str, result_format: dict
) -> Any:
    """Validate the whole DataFrame against the suite in ``ctx``; returns GX's validation result."""
    definition = (
        ctx.data_sources.add_pandas(source)
        .add_dataframe_asset(asset)
        .add_batch_definition_whole_dataframe(batch)
    )
    return definition.get_batch(batch_parameters={"dataframe": df}).validate(
        suite, result_format=result_format
    )
