"""Tasks that more than one DAG runs, defined once; each DAG wires them in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from returnledger.airflow.hooks import AMAZON_CONN_ID

if TYPE_CHECKING:
    from returnledger.reports.digests import Kind

# given as doc_md: a mapped task does not take its docs from the function's docstring
SEND_DOC = """Mail one owner team its digest through `smtp_default` (Variable `returnledger_team_emails`).

One mapped task per team, listed under the team's name: a failed mail retries alone."""


@task(map_index_template="{{ team }}", doc_md=SEND_DOC)
def send(digest: dict) -> str:
    """See SEND_DOC."""
    from returnledger.airflow.notifiers import send_digest
    from returnledger.airflow.objects import object_store

    ctx = get_current_context()
    ctx["team"] = digest["owner"]  # type: ignore[typeddict-unknown-key]  # read by map_index_template
    return send_digest(digest, ctx, folder=object_store("digests"))  # build may have run on another host


@task(task_id="build")
def build_digests(kind: Kind) -> list[dict]:
    """Write one digest per owner team (HTML) to `digests/` of the object store, every number as of the run's
    end: the daily digest (``kind`` daily) or the weekly review (weekly)."""
    from returnledger.airflow.hooks import ledger_dsn
    from returnledger.airflow.objects import object_store
    from returnledger.airflow.schedule import run_moment
    from returnledger.reports.digests import build_and_write

    run = run_moment()
    return build_and_write(ledger_dsn(), as_of=run.as_of, kind=kind, out_dir=object_store("digests"))


@contextmanager
def fail_fast() -> Iterator[None]:
    """Failures another try cannot fix end the task at once, without its retries, saying what to fix.

    Bad Amazon credentials are refused on every try, and a rejected export is the same file on every
    try: retrying only delays the mail. Business modules raise their own errors; only this edge turns
    them into AirflowFailException (no retries).
    """
    from returnledger.clients.amazon import AmazonAuthError
    from returnledger.reconciliation.amazon_export import AmazonExportRejected

    try:
        yield
    except AmazonAuthError as e:
        raise AirflowFailException(
            f"Amazon refused the credentials of the {AMAZON_CONN_ID!r} connection ({e}). Fix its LWA client "
            f"id/secret (login/password) or its refresh_token extra, check it with the connection's Test "
            f"button, then clear this task; retries would be refused the same way. Nothing was lost: the "
            f"notes and restocks stay PENDING."
        ) from e
    except AmazonExportRejected as e:
        raise AirflowFailException(
            f"{e}\nFix the export (or get a corrected one from Vendor Central), put it in place of "
            f"{e.source} (in exports/ of the object store, or the Variable returnledger_export_base), "
            f"then clear this task; retrying the same file would reject it again."
        ) from e
