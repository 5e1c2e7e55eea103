"""The returns exceptions console: the owner teams' page in the Airflow UI.

Operations, warehouse, integration and finance work their exception queue here: filter by owner team,
type, status and age; open one to see the return line's history and the raw ReBound payloads; resolve,
dismiss, retry an Amazon submission, add the missing reason-code mapping or SKU.

This module assembles the FastAPI app the plugin mounts: every route, known or not, passes the
middleware that admits Airflow users (``console.auth``), then the pages (``console.pages``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response

from returnledger.console.auth import (
    AirflowAuth,
    Caller,
    Forbidden,
    NotAuthenticated,
    authenticate,
    check_change,
)
from returnledger.console.data_docs import add_data_docs
from returnledger.console.pages import add_pages, base_of, render_page

log = logging.getLogger(__name__)


class ConsoleConfigError(RuntimeError):
    """The console cannot reach the ledger: its ``returns_db`` connection is missing or unreadable."""


def default_dsn() -> str:
    """The ledger DSN from Airflow's ``returns_db`` connection, and nothing else.

    No fallback to RETURNLEDGER_DSN or an embedded server: a console that quietly opened another
    database would show (and change) a ledger the DAGs never write to.
    """
    from returnledger.airflow.hooks import DB_CONN_ID, ledger_dsn

    try:
        return ledger_dsn()
    except Exception as exc:
        raise ConsoleConfigError(
            f"the returns exceptions console reads the ledger only through the Airflow connection "
            f"{DB_CONN_ID!r}, which could not be read ({type(exc).__name__}: {exc}); define it "
            f"(AIRFLOW_CONN_{DB_CONN_ID.upper()}, the Connections page or the secrets backend) "
            f"and restart the api-server"
        ) from exc


def _utcnow() -> datetime:
    return datetime.now(UTC)


def create_console_app(
    dsn_provider: Callable[[], str] | None = None,
    auth: AirflowAuth | None = None,
    clock: Callable[[], datetime] | None = None,
    list_limit: int = 500,
    data_docs: Callable[[], Any] | None = None,
) -> FastAPI:
    """The console as a FastAPI app; the plugin mounts it under /returnledger.

    ``dsn_provider`` returns the ledger DSN on each request (default: the returns_db connection,
    checked here so a missing one stops the start with ConsoleConfigError); ``auth`` validates tokens
    (default: the api-server's auth manager); ``clock`` gives the time actions are recorded at;
    ``data_docs`` returns the folder of the GX Data Docs site (default: the object store's ``data-docs/``).
    """
    if dsn_provider is None:
        default_dsn()  # refuse to start without the returns_db connection, not on the first request
    auth = auth or AirflowAuth()
    app = FastAPI(title="Returns exceptions", docs_url=None, redoc_url=None, openapi_url=None)

    def refusal(request: Request, exc: Exception, caller: Caller | None = None) -> Response:
        code = 401 if isinstance(exc, NotAuthenticated) else 403
        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else {}
        if "text/html" in request.headers.get("accept", ""):
            next_url = str(request.url) if request.method == "GET" else base_of(request) + "/"
            resp = render_page(
                request,
                "problem",
                status_code=code,
                caller=caller,
                title="Sign-in required" if code == 401 else "Not allowed",
                text=str(exc),
                login_url=auth.login_url(next_url),
            )
            resp.headers.update(headers)
            return resp
        return Response(
            json.dumps({"detail": str(exc)}), status_code=code, headers=headers, media_type="application/json"
        )

    @app.middleware("http")
    async def require_airflow_user(request: Request, call_next):
        """Every route, known or not, needs an Airflow user who may read; anything but GET/HEAD changes
        the ledger, so it also needs a user who may act (Op/Admin), and, from a browser, the CSRF checks."""
        caller: Caller | None = None
        try:
            caller = await authenticate(request, auth)
            await check_change(request, auth, caller)
        except (NotAuthenticated, Forbidden) as exc:
            return refusal(request, exc, caller)
        request.state.caller = caller
        return await call_next(request)

    add_data_docs(app, data_docs)
    add_pages(
        app,
        dsn_provider=dsn_provider or default_dsn,
        auth=auth,
        clock=clock or _utcnow,
        list_limit=list_limit,
    )

    @app.exception_handler(HTTPException)
    async def http_problem(request: Request, exc: HTTPException):
        caller = getattr(request.state, "caller", None)
        return render_page(
            request,
            "problem",
            status_code=exc.status_code,
            caller=caller,
            title=f"{exc.status_code}",
            text=str(exc.detail),
            login_url=None,
        )

    return app
