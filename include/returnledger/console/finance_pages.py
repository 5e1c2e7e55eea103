"""Finance's pages in the console (queries in ``console.finance``), readable by every role, changing nothing:

* GET /finance: the current month from the latest daily check, money at risk, and every closed month (the
  trend), each number linking to its rows;
* GET /finance/month/{key}: one closed month (``YYYY-MM``) or one daily check (``daily:YYYY-MM-DD``);
* GET /finance/rows?key=&status=&age=&origin=&at_risk=1: the rows behind a number;
* GET /finance/report/{period}/month_end_report.csv (and ``.html``): a closed month's report as its close
  wrote it (object store, else the close's stored bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from returnledger.reports.carry_over import AGE_BUCKETS, AT_RISK, trend_chart


def rows_link(key: str, **filters) -> str:
    """The console path (after the base) of the rows behind a number."""
    query = {"key": key, **{k: v for k, v in filters.items() if v is not None and v is not False}}
    if query.get("at_risk") is True:
        query["at_risk"] = "1"
    return "finance/rows?" + urlencode(query)


def add_finance_pages(app: FastAPI, *, dsn_provider: Callable[[], str], list_limit: int) -> None:
    from returnledger.console.finance import (
        closed_months,
        closed_summary,
        daily_summary,
        finance_rows,
        finance_summary,
        latest_daily_key,
        report_file,
        ties_out,
    )
    from returnledger.console.glossary import say
    from returnledger.console.pages import render_page
    from returnledger.reports.finance import STATUS_ACTIONS, STATUS_COLOURS

    def connect():
        from returnledger.store.db import connect as db_connect

        return db_connect(dsn_provider())

    common: dict[str, Any] = {
        "rows_link": rows_link,
        "say": say,
        "actions": STATUS_ACTIONS,
        "colours": STATUS_COLOURS,
        "buckets": AGE_BUCKETS,
        "at_risk_statuses": AT_RISK,
    }

    @app.get("/finance", response_class=HTMLResponse)
    def finance_page(request: Request):
        """The current month (latest daily check) and every closed month."""
        with connect() as conn:
            key = latest_daily_key(conn)
            current = daily_summary(conn, key) if key else None
            months = closed_months(conn)
        trend = [{"period": m["period"], "totals": m["totals"]} for m in months]
        return render_page(
            request,
            "finance",
            caller=request.state.caller,
            current=current,
            months=months,
            trend_chart=trend_chart(trend, STATUS_COLOURS) if trend else None,
            statuses=[s for s in STATUS_COLOURS if any(s in m["totals"] for m in months)],
            one=None,
            **common,
        )

    @app.get("/finance/month/{key}", response_class=HTMLResponse)
    def month_page(request: Request, key: str):
        """One closed month or one daily check, with the report to download for a closed month."""
        with connect() as conn:
            closed = {m["period"]: m for m in closed_months(conn)}
            summary = closed_summary(conn, closed[key]) if key in closed else finance_summary(conn, key)
        if not summary["total"]["rows"] and key not in closed:
            raise HTTPException(404, f"no reconciliation results under {key!r}")
        return render_page(
            request,
            "finance",
            caller=request.state.caller,
            current=None,
            months=[],
            one=summary,
            close=closed.get(key),
            tie=ties_out(summary, closed[key]) if key in closed else None,
            **common,
        )

    @app.get("/finance/rows", response_class=HTMLResponse)
    def rows_page(
        request: Request,
        key: str,
        status: str | None = None,
        age: str | None = None,
        origin: str | None = None,
        at_risk: str | None = None,
    ):
        """The rows behind one number: by row key, the first ``list_limit``."""
        with connect() as conn:
            try:
                rows = finance_rows(
                    conn,
                    key,
                    status=status or None,
                    bucket=age or None,
                    origin=origin,
                    at_risk=at_risk in ("1", "true", "yes"),
                    limit=list_limit,
                )
            except ValueError as exc:
                raise HTTPException(400, str(exc)) from None
        filters = {"status": status, "age": age, "origin": origin, "at risk": "yes" if at_risk else None}
        return render_page(
            request,
            "finance_rows",
            caller=request.state.caller,
            key=key,
            filters={k: v for k, v in filters.items() if v is not None},
            rows=rows,
            limit=list_limit,
            say=say,
        )

    @app.get("/finance/report/{period}/{name}")
    def report_download(request: Request, period: str, name: str):
        """A closed month's month_end_report.csv or .html, as its close wrote it."""
        with connect() as conn:
            try:
                data, source = report_file(conn, period, name)
            except LookupError as exc:
                raise HTTPException(404, str(exc)) from None
        media = "text/csv; charset=utf-8" if name.endswith(".csv") else "text/html; charset=utf-8"
        disposition = "attachment" if name.endswith(".csv") else "inline"
        return Response(
            data,
            media_type=media,
            headers={
                "Content-Disposition": f'{disposition}; filename="{period}-{name}"',
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
                "X-Returnledger-Source": source,
            },
        )
