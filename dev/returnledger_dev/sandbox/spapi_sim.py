"""SIMULATED Selling Partner API (vendor side) for the sandbox.

Serves the real SP-API paths, bodies and error shapes, so that the production
Amazon client (python-amazon-sp-api through ``returnledger.clients.amazon``)
runs unchanged against it; only the endpoint and LWA URL differ. Bodies are
validated against Amazon's published models (``amazon_models/``, Apache-2.0),
throttling is a per-operation token bucket answering 429 like Amazon, and the
scenario's ``faults.amazon`` injects 5xx answers and lost responses. What the
simulator took in is written to the run's output folder for ``check.py``:
``amazon_requests.jsonl`` (every request with the status answered) and
``amazon_inventory.csv``; the Vendor Central returns export lands where the
reconciliation DAG picks it up.

Simulated, not Amazon's: the per-returns-notice credit outcomes come from the
scenario, and so does the answer to a credit note resubmitted under an ``id``
already taken in (``amazon.duplicate_credit_note``): ``"same_note"`` (default)
treats it as the same credit note, answered with the first transactionId;
``"reject"`` answers 202 with a new transaction that fails with
``DuplicateInvoiceNumber``, naming the transaction that took the note in.
An id counts as taken in once a submission of it was applied (202, or a lost
response) and its transaction does not end in Failure; a note whose
transaction fails may be sent again and is judged afresh. The fault
``faults.amazon.duplicate_details: "empty"`` makes that refusal name nothing
(empty ``details``), for the ledger's evidence rule (docs/operating-guide.md "Amazon's evidence").
"""

from __future__ import annotations

import json
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from returnledger_dev.sandbox.spapi_models import invoice_rule_errors, model_errors
from returnledger_dev.sandbox.spapi_state import SpApiSimulator

QUOTA_EXCEEDED = {
    "errors": [
        {
            "code": "QuotaExceeded",
            "message": "You exceeded your quota for the requested resource.",
            "details": "",
        }
    ]
}


def build_spapi_app(scenario: dict, *, out_dir: Path, **options: Any):
    """FastAPI app of the simulated SP-API for one scenario; state is on ``app.state.sim``.

    ``options`` are ``SpApiSimulator``'s (seed, landing_dir, LWA credentials, processing_polls, processing_s,
    usage_plan).
    """
    sim = SpApiSimulator(scenario, out_dir=out_dir, **options)

    @asynccontextmanager
    async def lifespan(_app):
        try:
            yield
        finally:
            sim.close()

    app = FastAPI(
        title="SIMULATED Selling Partner API (vendor)",
        docs_url="/_sandbox/docs",
        openapi_url="/_sandbox/openapi.json",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.sim = sim

    def answer(
        request: Request, body: Any, status: int, payload: dict, op: str | None = None
    ) -> JSONResponse:
        headers = {"x-amzn-RequestId": str(uuid.uuid4())}
        if op is not None:
            headers["x-amzn-RateLimit-Limit"] = f"{sim.buckets[op].rate:g}"
            with sim.lock:
                sim.stats[f"op:{op}:{status}"] += 1
        sim.log(request.method, request.url.path, body, status)
        return JSONResponse(payload, status_code=status, headers=headers)

    def error(code: str, message: str, details: str = "") -> dict:
        return {"errors": [{"code": code, "message": message, "details": details}]}

    async def read_json(request: Request) -> tuple[Any, bool]:
        raw = await request.body()
        if not raw:
            return None, True
        try:
            return json.loads(raw), True
        except ValueError:
            return raw.decode("utf-8", "replace"), False

    def gate(request: Request, body: Any, op: str) -> JSONResponse | None:
        """Token check, then the operation's bucket; a refusal is answered and logged here."""
        problem = sim.token_problem(request.headers.get("x-amz-access-token"))
        if problem:
            return answer(
                request,
                body,
                403,
                error("Unauthorized", "Access to requested resource is denied.", problem),
                op,
            )
        if not sim.buckets[op].take():
            return answer(request, body, 429, QUOTA_EXCEEDED, op)
        return None

    def fault_answer(request: Request, body: Any, op: str, status: int | None = None) -> JSONResponse:
        status = status or sim.fault_status()
        message = (
            "We encountered an internal error. Please try again."
            if status == 500
            else "Service temporarily unavailable. Please try again."
        )
        return answer(
            request,
            body,
            status,
            error("InternalFailure" if status == 500 else "ServiceUnavailable", message),
            op,
        )

    @app.post("/auth/o2/token")
    async def lwa_token(request: Request):
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        status, payload = sim.issue_token(form)
        sim.log("POST", request.url.path, None, status)  # the form carries secrets: not logged
        return JSONResponse(payload, status_code=status, headers={"Cache-Control": "no-store"})

    async def submit(request: Request, op: str, apply):
        body, is_json = await read_json(request)
        refused = gate(request, body, op)
        if refused is not None:
            return refused
        fault = sim.draw_fault()
        if fault == "error":
            return fault_answer(request, body, op)
        if not is_json or not isinstance(body, dict):
            return answer(
                request, body, 400, error("InvalidInput", "The request body is not a JSON object."), op
            )
        problems = model_errors(sim.validators[op], body)
        if not problems and op == "submitInvoices":
            problems = invoice_rule_errors(body)
        if problems:
            return answer(request, body, 400, {"errors": problems[:20]}, op)
        tid = apply(body)
        if fault == "lost":  # applied, but the caller never hears so
            return fault_answer(request, body, op, 500)
        return answer(request, body, 202, {"payload": {"transactionId": tid}}, op)

    @app.post("/vendor/payments/v1/invoices")
    async def submit_invoices(request: Request):
        return await submit(request, "submitInvoices", sim.take_invoices)

    @app.post("/vendor/directFulfillment/inventory/v1/warehouses/{warehouse_id}/items")
    async def submit_inventory_update(warehouse_id: str, request: Request):
        return await submit(request, "submitInventoryUpdate", sim.take_inventory)

    async def poll(request: Request, op: str, kind: str, transaction_id: str, wrap: bool):
        refused = gate(request, None, op)
        if refused is not None:
            return refused
        fault = sim.draw_fault()
        if fault == "error":
            return fault_answer(request, None, op)
        state = sim.transaction_state(transaction_id, kind)
        if state is None:
            return answer(
                request,
                None,
                404,
                error(
                    "NotFound", "The resource specified does not exist.", f"transactionId {transaction_id}"
                ),
                op,
            )
        if fault == "lost":
            return fault_answer(request, None, op, 500)
        if not wrap and "errors" in state:  # DF 2021-12-28 models errors as {"errors": [...]}
            state = dict(state, errors={"errors": state["errors"]})
        status = {"transactionStatus": state}
        return answer(request, None, 200, {"payload": status} if wrap else status, op)

    @app.get("/vendor/transactions/v1/transactions/{transaction_id}")
    async def get_transaction(transaction_id: str, request: Request):
        return await poll(request, "getTransaction", "invoices", transaction_id, wrap=True)

    @app.get("/vendor/directFulfillment/transactions/2021-12-28/transactions/{transaction_id}")
    async def get_transaction_status(transaction_id: str, request: Request):
        return await poll(request, "getTransactionStatus", "inventory", transaction_id, wrap=False)

    @app.get("/_sandbox/health")
    async def health():
        return {"status": "ok", "simulated": "Selling Partner API (vendor)"}

    @app.get("/_sandbox/stats")
    async def stats():
        return sim.summary()

    @app.post("/_sandbox/dump")
    async def dump():
        return sim.dump()

    return app
