"""The console's pages: the queue listing with its filters, one exception with everything needed to act
on it, and the actions (resolve, dismiss, retry, add a mapping or a SKU, choose the units to credit).

Plain server-rendered HTML from the templates in ``templates/console/`` (``returnledger.render``); the
lifecycle rules live in ``returnledger.exception_queue``. Every action runs as the signed-in Airflow user
and comes back to the exception's page, with the outcome or the refusal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from returnledger.console.auth import CSRF_FIELD, AirflowAuth, Caller, csrf_token_for, require_may_act
from returnledger.console.closes import add_close_pages
from returnledger.console.finance_pages import add_finance_pages
from returnledger.console.returns import add_return_pages
from returnledger.console.runs import add_run_pages
from returnledger.exception_types import CONSOLE_PATHS, all_codes, is_known, offering
from returnledger.models import ExceptionStatus
from returnledger.reference.mappings import AMAZON_REASON_CODES
from returnledger.render import render

log = logging.getLogger(__name__)

#: headings of the exception detail's parts (returnledger.exception_queue.queries.exception_detail)
SECTION_TITLES = {
    "return_order": "Return order (returns notice)",
    "line": "Return line",
    "history": "Line history",
    "raw_events": "Raw ReBound payloads",
    "held_events": "Held events",
    "submissions": "Amazon submissions",
    "amazon_return": "Amazon return record",
    "audit": "Audit trail",
}


def base_of(request: Request) -> str:
    """Where the console is mounted (links and form actions start here)."""
    return request.scope.get("root_path", "").rstrip("/")


def render_page(
    request: Request, template: str, status_code: int = 200, caller: Caller | None = None, **context: Any
) -> HTMLResponse:
    """``templates/console/<template>.html`` as a response that no cache keeps."""
    html = render(
        f"console/{template}.html",
        base=base_of(request),
        user=caller.name if caller else "",
        read_only=caller is not None and not caller.may_act,
        **context,
    )
    return HTMLResponse(
        html,
        status_code=status_code,
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


def _over_received(x: dict, line: dict) -> dict | None:
    """A QUANTITY_MISMATCH that holds an over-receipt's credit: the line's own (not a recount's after the
    disposition), the line received more than announced, and no credit quantity is chosen yet. The page
    then offers only the quantity action (``exception_queue.actions.over_receipt_held``)."""
    received, announced = line.get("quantity_received"), line.get("quantity_announced")
    if (
        x.get("type") not in offering("credit")
        or x.get("subject_key") != f"{x.get('return_id')}|{x.get('line')}"
        or received is None
        or announced is None
        or received <= announced
        or line.get("credit_quantity") is not None
    ):
        return None
    return {"received": received, "announced": announced}


def _optional_int(value: str | None, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except ValueError:
        raise HTTPException(400, f"{name} must be a whole number") from None
    if number < 0:
        raise HTTPException(400, f"{name} must not be negative")
    return number


def _as_of(value: str | None, clock: Callable[[], datetime]) -> datetime:
    """The page's reference time: ?as_of=YYYY-MM-DD (end of that day, UTC) or the clock."""
    if not value:
        return clock()
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise HTTPException(400, "as_of must be a date (YYYY-MM-DD)") from None
    return datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=UTC)


def _row_view(row: dict, as_of: datetime) -> dict:
    """Age and SLA breach for a listed exception (taken from the row when the queue computed them)."""
    r = dict(row)
    opened = r.get("opened_at")
    if r.get("age_days") is None and isinstance(opened, datetime):
        r["age_days"] = max((as_of - opened).days, 0)
    if "overdue" not in r:
        sla, age = r.get("sla_days"), r.get("age_days")
        breached = r.get("sla_breached")
        if breached is None:
            breached = sla is not None and age is not None and age > sla
        r["overdue"] = r.get("status") == "open" and bool(breached)
    return r


def _required(form: dict, name: str) -> str:
    if not form.get(name):
        raise ValueError(f"{name.replace('_', ' ')} is required")
    return form[name]


def _whole_number(form: dict, name: str, what: str) -> int:
    try:
        return int(_required(form, name))
    except ValueError:
        raise ValueError(f"{what} must be a whole number") from None


def add_pages(
    app: FastAPI,
    *,
    dsn_provider: Callable[[], str],
    auth: AirflowAuth,
    clock: Callable[[], datetime],
    list_limit: int,
) -> None:
    """The console's routes on ``app``."""
    #: on every state-changing route; the middleware has refused already, this keeps new routes honest
    act_guard = [Depends(require_may_act)]
    add_close_pages(app, dsn_provider=dsn_provider, clock=clock, act_guard=act_guard)
    add_return_pages(app, dsn_provider=dsn_provider, clock=clock, list_limit=list_limit)
    add_finance_pages(app, dsn_provider=dsn_provider, list_limit=list_limit)
    add_run_pages(app, dsn_provider=dsn_provider, list_limit=list_limit)

    def connect():
        from returnledger.store.db import connect as db_connect

        return db_connect(dsn_provider())

    @app.get("/", response_class=HTMLResponse)
    def list_page(
        request: Request,
        owner: str | None = None,
        type: str | None = None,
        status: str | None = "open",
        min_age_days: str | None = None,
        as_of: str | None = None,
        msg: str | None = None,
    ):
        from returnledger.exception_queue.queries import list_exceptions
        from returnledger.reference.owners import default_owners

        caller: Caller = request.state.caller
        type_ = type or None
        if type_ and not is_known(type_):
            raise HTTPException(400, f"unknown exception type {type_!r}")
        status_ = None if status in (None, "", "all") else status
        if status_ and status_ not in {s.value for s in ExceptionStatus}:
            raise HTTPException(400, f"unknown status {status_!r}")
        min_age = _optional_int(min_age_days, "min_age_days")
        when = _as_of(as_of, clock)
        with connect() as conn:
            rows = list_exceptions(
                conn,
                owner=owner or None,
                type=type_,
                status=status_,
                min_age_days=min_age,
                as_of=when,
                limit=list_limit,
            )
            owners = [
                r[0]
                for r in conn.execute(
                    "SELECT owner FROM ledger.owner_team UNION SELECT owner FROM ledger.exception ORDER BY 1"
                )
            ]
        owners = sorted(set(owners) | {o.owner for o in default_owners().values()})
        return render_page(
            request,
            "list",
            caller=caller,
            rows=[_row_view(r, when) for r in rows],
            owners=owners,
            types=all_codes(),
            statuses=["open", "resolved", "dismissed", "all"],
            f={"owner": owner or "", "type": type_ or "", "status": status or "all", "min_age_days": min_age},
            as_of=when,
            limit=list_limit,
            message=msg,
        )

    def detail_page(
        request: Request,
        exception_id: int,
        *,
        message: str | None = None,
        error: str | None = None,
        status_code: int = 200,
    ) -> HTMLResponse:
        from returnledger.console.data_docs import validation_page
        from returnledger.exception_queue.queries import exception_detail

        caller: Caller = request.state.caller
        with connect() as conn:
            try:
                detail = exception_detail(conn, exception_id)
            except LookupError:
                raise HTTPException(404, f"exception {exception_id} not found") from None
            data_docs = validation_page(conn, detail["exception"].get("raw_id"))
        x = dict(detail["exception"])
        sections = [
            (SECTION_TITLES.get(k, k.replace("_", " ").capitalize()), v)
            for k, v in detail.items()
            if k != "exception"
        ]
        line = detail.get("line") or {}
        return render_page(
            request,
            "detail",
            status_code=status_code,
            caller=caller,
            x=x,
            sections=sections,
            can_act=caller.may_act,
            act_requirement=auth.act_requirement(),
            csrf=csrf_token_for(caller.token) if caller.may_act else "",
            reason_codes=AMAZON_REASON_CODES,
            rebound_reason=line.get("reason"),
            over_received=_over_received(x, line),
            message=message,
            error=error,
            what_to_do=x.get("what_to_do"),
            data_docs=data_docs,
        )

    @app.get("/exceptions/{exception_id}", response_class=HTMLResponse)
    def exception_page(request: Request, exception_id: int, msg: str | None = None):
        return detail_page(request, exception_id, message=msg)

    async def act(
        request: Request, exception_id: int, verb: str, run: Callable[[str, str, dict], Any], done: str
    ):
        """Run one lifecycle action as the signed-in user; back to the exception page either way."""
        import psycopg
        from starlette.concurrency import run_in_threadpool

        from returnledger.exception_queue.queue import ExceptionActionError

        caller: Caller = request.state.caller
        form = {k: str(v).strip() for k, v in (await request.form()).items() if k != CSRF_FIELD}
        try:
            await run_in_threadpool(run, dsn_provider(), caller.name, form)
        except LookupError:
            raise HTTPException(404, f"exception {exception_id} not found") from None
        except (ValueError, psycopg.errors.IntegrityError, psycopg.errors.DataError) as exc:
            # ExceptionActionError: the action does not fit the exception's state (already closed, wrong type)
            conflict = isinstance(exc, ExceptionActionError)
            log.info("console %s on exception %s refused: %s", verb, exception_id, exc)
            return await run_in_threadpool(
                detail_page,
                request,
                exception_id,
                error=f"Could not {verb}: {exc}",
                status_code=409 if conflict else 400,
            )
        log.info("console: %s %s exception %s", caller.name, verb, exception_id)
        query = urlencode({"msg": done.format(user=caller.name)})
        return RedirectResponse(f"{base_of(request)}/exceptions/{exception_id}?{query}", status_code=303)

    def action(path: str, verb: str, done: str):
        """Register ``run(dsn, actor, form, exception_id)`` as POST /exceptions/{exception_id}/<path>,
        run through ``act`` (route named after ``run``)."""

        def register(run: Callable[[str, str, dict, int], Any]):
            async def route(request: Request, exception_id: int):
                return await act(
                    request,
                    exception_id,
                    verb,
                    lambda dsn, actor, form: run(dsn, actor, form, exception_id),
                    done,
                )

            app.post(f"/exceptions/{{exception_id}}/{path}", dependencies=act_guard, name=run.__name__)(route)
            return run

        return register

    @action(
        "resolve", "resolve", "Resolved by {user}. Held lines, if any, are released on the next sync run."
    )
    def resolve(dsn, actor, form, exception_id):
        from returnledger.exception_queue.actions import resolve_exception

        return resolve_exception(
            dsn, exception_id, actor=actor, resolution=_required(form, "resolution"), at=clock()
        )

    @action("dismiss", "dismiss", "Dismissed by {user}.")
    def dismiss(dsn, actor, form, exception_id):
        from returnledger.exception_queue.actions import dismiss_exception

        return dismiss_exception(dsn, exception_id, actor=actor, reason=_required(form, "reason"), at=clock())

    @action(
        "retry",
        "retry",
        "Retry requested by {user}: the submission goes to Amazon again on the next sync run.",
    )
    def retry(dsn, actor, form, exception_id):
        from returnledger.exception_queue.retry import retry_submission

        return retry_submission(dsn, exception_id, actor=actor, at=clock())

    @action(
        "mapping",
        "add the mapping",
        "Mapping added and exception resolved by {user}; held lines are released on the next sync run.",
    )
    def add_mapping(dsn, actor, form, exception_id):
        from returnledger.exception_queue.actions import resolve_with_mapping

        reason = _required(form, "amazon_reason").upper()
        return resolve_with_mapping(dsn, exception_id, reason, actor=actor, at=clock())

    @action(
        "credit-quantity",
        "choose the quantity to credit",
        "Quantity to credit chosen by {user}; the credit note goes to Amazon on the next sync run.",
    )
    def credit_quantity(dsn, actor, form, exception_id):
        from returnledger.exception_queue.actions import resolve_over_receipt

        quantity = _whole_number(form, "credit_quantity", "the quantity to credit")
        return resolve_over_receipt(
            dsn, exception_id, quantity, actor=actor, at=clock(), note=form.get("note", "")
        )

    @action(
        CONSOLE_PATHS["pick"],
        "pick the body",
        "Body chosen by {user}, the others superseded; the line's held events go on at the next sync run.",
    )
    def pick(dsn, actor, form, exception_id):
        from returnledger.exception_queue.actions import pick_event_body

        raw_id = _whole_number(form, "raw_id", "the raw id of the body")
        return pick_event_body(
            dsn, exception_id, raw_id, actor=actor, at=clock(), why=form.get("why") or None
        )

    @action(
        "sku",
        "add the SKU",
        "SKU added and exception resolved by {user}; held lines are released on the next sync run.",
    )
    def add_sku(dsn, actor, form, exception_id):
        from returnledger.exception_queue.actions import resolve_with_sku

        try:
            unit_cost = Decimal(_required(form, "unit_cost"))
        except InvalidOperation:
            raise ValueError("unit cost must be a number") from None
        available = _whole_number(form, "available", "available")
        if unit_cost < 0 or available < 0:
            raise ValueError("unit cost and available must be zero or more")
        return resolve_with_sku(
            dsn, exception_id, _required(form, "asin"), unit_cost, available, actor=actor, at=clock()
        )
