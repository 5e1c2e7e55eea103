"""The console's closed months: every close of every month with its versions, and the Admin-only,
audited reopening of the latest closed month (returnledger.reconciliation.closes holds the rules)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from returnledger.console.auth import CSRF_FIELD, Caller, csrf_token_for, require_admin

log = logging.getLogger(__name__)

_CLOSES_SQL = """
SELECT period, version, as_of, batch_id, rows, csv_sha256, reopened_at, reopened_by, reopen_reason
  FROM ledger.period_close ORDER BY period DESC, version DESC
"""


def add_close_pages(
    app: FastAPI, *, dsn_provider: Callable[[], str], clock: Callable[[], datetime], act_guard: list[Any]
) -> None:
    """GET /closes and POST /closes/{period}/reopen (Op/Admin guard, then Admin only) on ``app``."""
    from returnledger.console.pages import base_of, render_page

    def closes(request: Request, *, message=None, error=None, status_code: int = 200) -> HTMLResponse:
        from returnledger.store.db import connect

        caller: Caller = request.state.caller
        with connect(dsn_provider()) as conn:
            rows = conn.execute(_CLOSES_SQL).fetchall()
        current = [r[0] for r in rows if r[6] is None]
        return render_page(
            request,
            "closes",
            status_code=status_code,
            caller=caller,
            rows=rows,
            latest=current[0] if current else None,
            can_reopen=caller.may_admin,
            csrf=csrf_token_for(caller.token) if caller.may_admin else "",
            message=message,
            error=error,
        )

    @app.get("/closes", response_class=HTMLResponse)
    def closes_page(request: Request, msg: str | None = None):
        """Every close of every month, versions included; an Admin may reopen the latest closed month."""
        return closes(request, message=msg)

    @app.post("/closes/{period}/reopen", dependencies=[*act_guard, Depends(require_admin)])
    async def reopen_close(request: Request, period: str):
        """Reopen a closed month (Admin, audited): its report stays; the next close writes a new version."""
        from starlette.concurrency import run_in_threadpool

        from returnledger.reconciliation.closes import reopen

        caller: Caller = request.state.caller
        form = {k: str(v).strip() for k, v in (await request.form()).items() if k != CSRF_FIELD}
        try:
            old = await run_in_threadpool(
                reopen, dsn_provider(), period, actor=caller.name, reason=form.get("reason", ""), at=clock()
            )
        except ValueError as exc:
            log.info("console reopen of %s by %s refused: %s", period, caller.name, exc)
            return closes(request, error=f"Could not reopen {period}: {exc}", status_code=409)
        log.info("console: %s reopened %s version %s", caller.name, period, old.version)
        done = (
            f"{period} reopened by {caller.name}; version {old.version} is kept as written. The month's next "
            "close (clear or trigger its close run of returns_reconciliation) writes the new version."
        )
        return RedirectResponse(f"{base_of(request)}/closes?{urlencode({'msg': done})}", status_code=303)
