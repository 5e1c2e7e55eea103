"""The console's customer-team pages: find a return by any of its references and read its whole story,
the owner teams' queues (``console.teams``) and the glossary of the ledger's codes (``console.glossary``).

Every page here only reads (any Airflow role that may read the console); acting on an exception stays on
the exception's own page, for Op and Admin. The queries are in ``console.story`` and ``console.teams``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from returnledger.console.glossary import KIND_TITLES, glossary, say

#: the references "Find a return" takes, as its form says them
REFERENCES = "return id, order reference, RMA, VRET, returns notice, SKU or credit-note id"


def add_return_pages(
    app: FastAPI, *, dsn_provider: Callable[[], str], clock: Callable[[], datetime], list_limit: int
) -> None:
    """GET /returns (search), /returns/{return_id} (story), /glossary, /teams and /teams/{team} on ``app``."""
    from returnledger.console.pages import _as_of, base_of, render_page
    from returnledger.console.teams import add_team_pages

    def connect():
        from returnledger.store.db import connect as db_connect

        return db_connect(dsn_provider())

    add_team_pages(app, connect=connect, moment=lambda value: _as_of(value, clock), list_limit=list_limit)

    @app.get("/returns", response_class=HTMLResponse)
    def find_page(request: Request, q: str | None = None):
        """One search box; a reference that names exactly one return opens its story."""
        from returnledger.console.story import search_returns

        text = (q or "").strip()
        rows: list[dict] = []
        if text:
            with connect() as conn:
                rows = search_returns(conn, text, limit=list_limit)
            if len(rows) == 1:
                url = f"{base_of(request)}/returns/{quote(rows[0]['return_id'], safe='')}"
                return RedirectResponse(url, status_code=303)
        return render_page(
            request,
            "find",
            caller=request.state.caller,
            q=text,
            rows=rows,
            limit=list_limit,
            references=REFERENCES,
            say=say,
        )

    @app.get("/returns/{return_id}", response_class=HTMLResponse)
    def story_page(request: Request, return_id: str):
        """The return's whole story in time order, each code in plain words."""
        from returnledger.console.story import ReturnNotFound, return_story

        with connect() as conn:
            try:
                story = return_story(conn, return_id)
            except ReturnNotFound:
                raise HTTPException(404, f"no return {return_id!r} in the ledger") from None
        return render_page(
            request,
            "return",
            caller=request.state.caller,
            return_id=return_id,
            s=story,
            say=say,
            references=REFERENCES,
        )

    @app.get("/glossary", response_class=HTMLResponse)
    def glossary_page(request: Request):
        """Every code the console shows, in plain words."""
        return render_page(
            request, "glossary", caller=request.state.caller, glossary=glossary(), titles=KIND_TITLES
        )
