"""The one Great Expectations wrapper: an ephemeral context, a suite run over a pandas DataFrame as GX 1.x
runs validations (a Validation Definition, the suite over a batch definition, run by a Checkpoint), and
the Data Docs of a run built into the shared object store.

Both GX gates of the project go through here: the events suite (returnledger.screening.suite) and the
Amazon Vendor Central export check (returnledger.reconciliation.amazon_export). GX costs seconds to
import, so nothing here imports it before it is called.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
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


#: the run time of every checkpoint run: a run is named by its batch (``run_name``), so the path of its
#: Data Docs page follows from the batch id alone (``docs_page``)
RUN_TIME = datetime(2000, 1, 1, tzinfo=UTC)


def run_checkpoint(
    ctx: Any,
    df: Any,
    suite: Any,
    *,
    source: str,
    asset: str,
    batch: str,
    result_format: dict,
    run_name: str | None = None,
) -> tuple[Any, Any]:
    """Validate the whole DataFrame: the suite and the batch definition as a Validation Definition, run by
    a Checkpoint (no actions: the caller routes rows, and ``publish_data_docs`` builds the docs it wants).
    Returns GX's validation result and its key (a ``ValidationResultIdentifier``, what Data Docs use)."""
    gx = import_gx()
    from great_expectations.core.run_identifier import RunIdentifier

    definition = (
        ctx.data_sources.add_pandas(source)
        .add_dataframe_asset(asset)
        .add_batch_definition_whole_dataframe(batch)
    )
    validation = ctx.validation_definitions.add(
        gx.ValidationDefinition(name=suite.name, data=definition, suite=ctx.suites.add(suite))
    )
    checkpoint = ctx.checkpoints.add(
        gx.Checkpoint(
            name=f"{suite.name}_checkpoint",
            validation_definitions=[validation],
            result_format=result_format,
            actions=[],
        )
    )
    run = checkpoint.run(
        batch_parameters={"dataframe": df},
        run_id=RunIdentifier(run_name=safe_name(run_name or suite.name), run_time=RUN_TIME),
    )
    ((key, result),) = run.run_results.items()
    return result, key


def run_suite(
    ctx: Any, df: Any, suite: Any, *, source: str, asset: str, batch: str, result_format: dict
) -> Any:
    """``run_checkpoint``'s validation result alone (a gate that keeps no Data Docs)."""
    result, _ = run_checkpoint(
        ctx, df, suite, source=source, asset=asset, batch=batch, result_format=result_format
    )
    return result


def safe_name(text: str) -> str:
    """A batch id as a file and run name (no ``:`` or ``/``)."""
    return text.replace(":", "_").replace("/", "_")


def docs_page(suite: str, run_name: str, source: str, asset: str) -> str:
    """Where the Data Docs page of a checkpoint run lies, relative to the site's root."""
    stamp = RUN_TIME.strftime("%Y%m%dT%H%M%S.%fZ")
    return f"validations/{suite}/{safe_name(run_name)}/{stamp}/{source}-{asset}.html"


def publish_data_docs(ctx: Any, key: Any, target: Any) -> str:
    """Build the Data Docs of one validation (its page, the suite's page and the index) and copy them into
    ``target``, a path-like folder (the object store's ``data-docs/``: local or ``s3://``). GX's static
    files (styles, scripts, fonts) are copied once, when the store does not have them yet. Returns the
    validation page's path relative to ``target``. The index lists the validations of this context, so
    each run's ``index.html`` shows that run; every run's page stays at its own path."""
    import tempfile
    from urllib.parse import unquote, urlsplit

    from returnledger.store.objects import write_bytes

    with tempfile.TemporaryDirectory(prefix="gx-docs-") as tmp:
        site = Path(tmp)
        ctx.add_data_docs_site(
            site_name="returnledger",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": tmp},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        ctx.build_data_docs(site_names=["returnledger"], resource_identifiers=[key])
        (url,) = ctx.get_docs_sites_urls(resource_identifier=key, site_name="returnledger")
        page = Path(unquote(urlsplit(url["site_url"]).path)).relative_to(site).as_posix()
        have_static = (target / "static").exists()
        for path in sorted(p for p in site.rglob("*") if p.is_file()):
            rel = path.relative_to(site).as_posix()
            if rel.startswith("static/") and have_static:
                continue
            write_bytes(target / rel, path.read_bytes())
    return page
