"""Tasks that more than one DAG runs, defined once; each DAG wires them in."""

from __future__ import annotations

from airflow.sdk import get_current_context, task

# given as doc_md: a mapped task does not take its docs from the function's docstring
SEND_DOC = """Mail one owner team its digest through `smtp_default` (Variable `returnledger_team_emails`).

One mapped task per team, listed under the team's name: a failed mail retries alone."""


@task(map_index_template="{{ team }}", doc_md=SEND_DOC)
def send(digest: dict) -> str:
    """See SEND_DOC."""
    from returnledger.airflow.notifiers import send_digest

    ctx = get_current_context()
    ctx["team"] = digest["owner"]  # type: ignore[typeddict-unknown-key]  # read by map_index_template
    return send_digest(digest, ctx)
