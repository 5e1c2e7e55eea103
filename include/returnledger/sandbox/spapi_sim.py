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
transaction fails may be sent again and is judged afresh.
"""
from __future__ import annotations

import csv
import json
import random
import re
import secrets
import threading
import time
import uuid
from collections import Counter
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from returnledger.clients.ratelimit import TokenBucket

MODELS_DIR = Path(__file__).resolve().parent / "amazon_models"
DECIMAL_PATTERN = r"^-?(0|([1-9]\d*))(\.\d+)?([eE][+-]?\d+)?$"  # stated in prose by the model
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")

# operation -> (default rate per second, default burst), from Amazon's usage plans (domain.md)
OPERATIONS = {
    "submitInvoices": (10.0, 10),
    "getTransaction": (10.0, 20),
    "submitInventoryUpdate": (10.0, 10),
    "getTransactionStatus": (10.0, 10),
}
RETURNS_EXPORT_COLUMNS = ["amazon_return_id", "returns_notice", "rma_id", "vret", "asin", "sku", "quantity",
                          "label", "returned_at", "charged_amount"]
DUPLICATE_MODES = ("same_note", "reject")
DUPLICATE_CODE = "DuplicateInvoiceNumber"
QUOTA_EXCEEDED = {"errors": [{"code": "QuotaExceeded",
                              "message": "You exceeded your quota for the requested resource.", "details": ""}]}


def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # type errors are the "type" keyword's business
    if not RFC3339.match(value):
        return False
    try:
        datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


@lru_cache(maxsize=None)
def request_validator(model_file: str, definition: str, models_dir: str = str(MODELS_DIR)):
    """Draft-4 validator of one request definition of Amazon's swagger model (as check.py builds it)."""
    import jsonschema

    model = json.loads((Path(models_dir) / model_file).read_text())
    defs = model["definitions"]
    if "Decimal" in defs:
        defs["Decimal"] = dict(defs["Decimal"], pattern=DECIMAL_PATTERN)
    checker = jsonschema.FormatChecker()
    checker.checks("date-time")(_date_time)  # RFC 3339, as the model's format says (no extra package)
    schema = {"$ref": f"#/definitions/{definition}", "definitions": defs}
    return jsonschema.Draft4Validator(schema, format_checker=checker)


def model_errors(validator, body: Any) -> list[dict]:
    """Amazon-style error entries for every way ``body`` breaks the model."""
    out = []
    for err in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(map(str, err.absolute_path)) or "(body)"
        out.append({"code": "InvalidInput", "message": f"{where}: {err.message[:200]}", "details": where})
    return out


def invoice_rule_errors(body: dict) -> list[dict]:
    """Rules the invoices model states in prose: quantity and net cost above zero."""
    out = []
    for i, inv in enumerate(body.get("invoices") or []):
        for j, item in enumerate(inv.get("items") or []):
            qty = (item.get("invoicedQuantity") or {}).get("amount")
            cost = (item.get("netCost") or {}).get("amount")
            where = f"invoices/{i}/items/{j}"
            if isinstance(qty, int) and qty <= 0:
                out.append({"code": "InvalidInput", "message": f"{where}: invoicedQuantity must be greater than zero",
                            "details": f"{where}/invoicedQuantity/amount"})
            if isinstance(cost, str) and re.match(DECIMAL_PATTERN, cost) and float(cost) <= 0:
                out.append({"code": "InvalidInput", "message": f"{where}: netCost must not be zero or negative",
                            "details": f"{where}/netCost/amount"})
    return out


def returns_notice_of(invoice: dict) -> str:
    """The returns notice a credit note answers (invoice level, else its first item's)."""
    notice = (invoice.get("creditNoteDetails") or {}).get("returnsReferenceNumber")
    if notice:
        return notice
    for item in invoice.get("items") or []:
        notice = (item.get("creditNoteDetails") or {}).get("returnsReferenceNumber")
        if notice:
            return notice
    return ""


class SpApiSimulator:
    """State of the simulated Amazon side: tokens, credit notes, transactions, stock, request log."""

    def __init__(self, scenario: dict, *, out_dir: Path, seed: int = 0, landing_dir: Path | None = None,
                 lwa_client_id: str = "sandbox-lwa-client", lwa_client_secret: str = "sandbox-lwa-secret",
                 refresh_token: str = "sandbox-refresh-token", processing_polls: int = 1):
        self.scenario = scenario
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.landing_dir = Path(landing_dir) if landing_dir else None
        self.lwa = (lwa_client_id, lwa_client_secret, refresh_token)
        self.processing_polls = processing_polls
        self.lock = threading.RLock()
        self.rng = random.Random(seed)
        amazon = scenario.get("amazon") or {}
        self.outcomes = {o["returns_notice"]: o for o in amazon.get("credit_outcomes") or []}
        self.duplicate_mode = amazon.get("duplicate_credit_note", "same_note")
        if self.duplicate_mode not in DUPLICATE_MODES:
            raise ValueError(f"amazon.duplicate_credit_note: unknown value {self.duplicate_mode!r} "
                             f"(expected one of {', '.join(map(repr, DUPLICATE_MODES))})")
        faults = ((scenario.get("faults") or {}).get("amazon")) or {}
        self.error_rate = float(faults.get("error_rate") or 0)
        self.lost_rate = float(faults.get("lost_response_rate") or 0)
        throttle = faults.get("throttle")
        self.buckets = {}
        for op, (rate, burst) in OPERATIONS.items():
            if throttle:
                rate, burst = throttle.get("rate", rate), throttle.get("burst", burst)
            self.buckets[op] = TokenBucket(rate, burst)
        self.tokens: dict[str, float] = {}           # access token -> expiry (monotonic seconds)
        self.asin = {c["sku"]: c.get("asin", "") for c in scenario.get("catalog") or []}
        self.stock = {c["sku"]: int(c.get("available") or 0) for c in scenario.get("catalog") or []}
        # credit-note id -> {invoice, transaction_id, notice, failed}: the latest submission that took the
        # note in; ``failed`` when that transaction ends in Failure (the id is then free to be judged afresh)
        self.notes: dict[str, dict] = {}
        # transactionId -> {kind, note_ids, polls, fate: Success|Failure|Processing, errors}; the fate is fixed
        # when the transaction is created (outcomes are the scenario's), polls only reveal it
        self.transactions: dict[str, dict] = {}
        self.stats = Counter()
        self.validators = {
            "submitInvoices": request_validator("vendorInvoices.json", "SubmitInvoicesRequest"),
            "submitInventoryUpdate": request_validator("vendorDirectFulfillmentInventoryV1.json",
                                                       "SubmitInventoryUpdateRequest"),
        }
        self.log_path = self.out_dir / "amazon_requests.jsonl"
        self.log_file = self.log_path.open("a", encoding="utf-8")
        self.write_returns_export()

    # --- outputs -------------------------------------------------------------------
    def log(self, method: str, path: str, body: Any, status: int) -> None:
        line = json.dumps({"at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                           "method": method, "path": path, "body": body, "status": status},
                          separators=(",", ":"))
        with self.lock:
            if self.log_file.closed:  # served again after a shutdown
                self.log_file = self.log_path.open("a", encoding="utf-8")
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def write_returns_export(self) -> Path | None:
        """The Vendor Central returns export, as the CSV a vendor downloads, into the landing folder."""
        if self.landing_dir is None:
            return None
        self.landing_dir.mkdir(parents=True, exist_ok=True)
        period = (self.scenario.get("run") or {}).get("close_period", "")
        path = self.landing_dir / f"vendor_central_returns_{period}.csv"
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(RETURNS_EXPORT_COLUMNS)
            for row in (self.scenario.get("amazon") or {}).get("returns") or []:
                w.writerow(["" if row.get(c) is None else row.get(c) for c in RETURNS_EXPORT_COLUMNS])
        tmp.replace(path)
        return path

    def dump(self) -> dict:
        with self.lock:
            rows = sorted((sku, self.asin.get(sku, ""), n) for sku, n in self.stock.items())
        path = self.out_dir / "amazon_inventory.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["sku", "asin", "available"])
            w.writerows(rows)
        export = self.write_returns_export()
        return {"inventory": str(path), "returns_export": str(export) if export else None, "skus": len(rows)}

    def summary(self) -> dict:
        with self.lock:
            by_op: dict[str, dict[str, int]] = {}
            for key, n in self.stats.items():
                if key.startswith("op:"):
                    _, op, status = key.split(":")
                    by_op.setdefault(op, {})[status] = n
            return {"requests": by_op, "credit_notes_taken_in": len(self.notes),
                    "credit_notes_failed": sum(1 for n in self.notes.values() if n["failed"]),
                    "credit_notes_resubmitted": self.stats["resubmitted"],
                    "credit_notes_conflicting": self.stats["conflicting"],
                    "credit_notes_rejected_as_duplicate": self.stats["duplicate_rejected"],
                    "duplicate_credit_note": self.duplicate_mode,
                    "transactions": len(self.transactions), "tokens_issued": self.stats["tokens"],
                    "faults": {"error": self.stats["fault:error"], "lost_response": self.stats["fault:lost"]}}

    def close(self) -> None:
        with self.lock:
            if not self.log_file.closed:
                self.log_file.close()

    # --- LWA -----------------------------------------------------------------------
    def issue_token(self, form: dict[str, str]) -> tuple[int, dict]:
        client_id, client_secret, refresh = self.lwa
        if form.get("grant_type") != "refresh_token":
            return 400, {"error": "unsupported_grant_type", "error_description": "Only refresh_token is supported"}
        if form.get("client_id") != client_id or form.get("client_secret") != client_secret:
            return 401, {"error": "invalid_client", "error_description": "Client authentication failed"}
        if form.get("refresh_token") != refresh:
            return 400, {"error": "invalid_grant",
                         "error_description": "The request has an invalid grant parameter : refresh_token"}
        token = "Atza|sandbox-" + secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = time.monotonic() + 3600
            self.stats["tokens"] += 1
        return 200, {"access_token": token, "token_type": "bearer", "expires_in": 3600, "refresh_token": refresh}

    def token_problem(self, token: str | None) -> str | None:
        expiry = self.tokens.get(token or "")
        if expiry is None:
            return "The access token you provided is revoked, malformed or invalid."
        if expiry < time.monotonic():
            return "The access token you provided has expired."
        return None

    # --- faults --------------------------------------------------------------------
    def draw_fault(self) -> str | None:
        """'error', 'lost' or None, from the scenario's seeded generator."""
        if not (self.error_rate or self.lost_rate):
            return None
        with self.lock:
            r = self.rng.random()
        fault = "error" if r < self.error_rate else "lost" if r < self.error_rate + self.lost_rate else None
        if fault:
            with self.lock:
                self.stats[f"fault:{fault}"] += 1
        return fault

    def fault_status(self) -> int:
        with self.lock:
            return self.rng.choice((500, 503))

    # --- operations ----------------------------------------------------------------
    def new_transaction_id(self) -> str:
        return f"{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{uuid.UUID(int=self.rng.getrandbits(128))}"

    def judge(self, note_ids: list[str]) -> tuple[str, list[dict]]:
        """(fate, errors) of a transaction carrying these (already recorded) notes, from the scenario's
        outcomes per returns notice: any Failure fails the whole batch, else any Processing never ends."""
        errors, stuck = [], False
        for note_id in note_ids:
            notice = self.notes[note_id]["notice"]
            outcome = self.outcomes.get(notice)
            if outcome is None:
                continue
            if outcome.get("status") == "Failure":
                err = outcome.get("error") or {}
                errors.append({"code": err.get("code", "InvalidInput"),
                               "message": err.get("message", "credit note refused"),
                               "details": f"creditNoteId={note_id}; returnsReferenceNumber={notice}"})
            elif outcome.get("status") == "Processing":
                stuck = True
        return ("Failure" if errors else "Processing" if stuck else "Success"), errors

    def take_invoices(self, body: dict) -> str:
        """Take in invoices/credit notes; returns the transactionId of the answer.

        A note whose ``id`` is already taken in (applied, and its transaction not failing) is never
        taken in twice. Under ``same_note`` it is the same note: a body made only of notes of one earlier
        transaction gets that transactionId back, a mixed body gets a new transaction for its new notes.
        Under ``reject`` a body holding any such note gets a new transaction that fails as a whole with
        one ``DuplicateInvoiceNumber`` error per known note (``details``: the transaction that took it in);
        the earlier notes and their transactions stand, and none of the body's notes is taken in."""
        with self.lock:
            invoices = body.get("invoices") or []
            ids = list(dict.fromkeys(inv["id"] for inv in invoices))
            held = {}  # id -> record, for ids taken in (a failed note is judged afresh)
            for inv in invoices:
                known = self.notes.get(inv["id"])
                if known is None or known["failed"]:
                    continue
                held[inv["id"]] = known
                if known["invoice"] != inv:
                    self.stats["conflicting"] += 1
            if held and self.duplicate_mode == "reject":
                tid = self.new_transaction_id()
                errors = [{"code": DUPLICATE_CODE, "message": f"invoice {i} was already submitted",
                           "details": held[i]["transaction_id"]} for i in ids if i in held]
                self.stats["duplicate_rejected"] += len(errors)
                self.transactions[tid] = {"kind": "invoices", "note_ids": ids, "polls": 0, "fate": "Failure",
                                          "errors": errors}
                return tid
            if ids and len(held) == len(ids):
                firsts = {n["transaction_id"] for n in held.values()}
                if len(firsts) == 1:
                    tid = firsts.pop()
                    if set(self.transactions[tid]["note_ids"]) >= set(ids):
                        self.stats["resubmitted"] += len(ids)
                        return tid
            tid = self.new_transaction_id()
            fresh: dict[str, None] = {}  # ids taken in by this transaction, in order
            for inv in invoices:
                if inv["id"] in held or inv["id"] in fresh:
                    self.stats["resubmitted"] += 1
                    continue
                fresh[inv["id"]] = None
                self.notes[inv["id"]] = {"invoice": inv, "transaction_id": tid, "notice": returns_notice_of(inv),
                                         "failed": False}
            fate, errors = self.judge(ids)
            if fate == "Failure":  # the batch fails as a whole: its new notes are not taken in
                for note_id in fresh:
                    self.notes[note_id]["failed"] = True
            self.transactions[tid] = {"kind": "invoices", "note_ids": ids, "polls": 0, "fate": fate,
                                      "errors": errors}
            return tid

    def take_inventory(self, body: dict) -> str:
        """Set the absolute available stock per SKU (a full feed zeroes the SKUs it leaves out)."""
        inventory = body["inventory"]
        with self.lock:
            if inventory.get("isFullUpdate"):
                named = {i.get("vendorProductIdentifier") for i in inventory["items"]}
                for sku in self.stock:
                    if sku not in named:
                        self.stock[sku] = 0
            for item in inventory["items"]:
                sku = item.get("vendorProductIdentifier") or item.get("buyerProductIdentifier")
                amount = item["availableQuantity"].get("amount")
                if sku is None or amount is None:
                    continue
                self.stock[sku] = 0 if item.get("isObsolete") else int(amount)
            tid = str(uuid.UUID(int=self.rng.getrandbits(128)))
            self.transactions[tid] = {"kind": "inventory", "note_ids": [], "polls": 0, "fate": "Success",
                                      "errors": []}
            return tid

    def transaction_state(self, tid: str, kind: str) -> dict | None:
        """Status of a transaction after one more poll: ``Processing`` for the first ``processing_polls``
        polls, then its fate (Success, or Failure with its errors; a stuck one stays Processing)."""
        with self.lock:
            tx = self.transactions.get(tid)
            if tx is None or tx["kind"] != kind:
                return None
            tx["polls"] += 1
            if tx["polls"] <= self.processing_polls or tx["fate"] == "Processing":
                return {"transactionId": tid, "status": "Processing"}
            if tx["fate"] == "Failure":
                return {"transactionId": tid, "status": "Failure", "errors": [dict(e) for e in tx["errors"]]}
            return {"transactionId": tid, "status": "Success"}


def build_spapi_app(scenario: dict, *, out_dir: Path, seed: int = 0, landing_dir: Path | None = None,
                    lwa_client_id: str = "sandbox-lwa-client", lwa_client_secret: str = "sandbox-lwa-secret",
                    refresh_token: str = "sandbox-refresh-token", processing_polls: int = 1):
    """FastAPI app of the simulated SP-API for one scenario; state is on ``app.state.sim``."""
    sim = SpApiSimulator(scenario, out_dir=out_dir, seed=seed, landing_dir=landing_dir,
                         lwa_client_id=lwa_client_id, lwa_client_secret=lwa_client_secret,
                         refresh_token=refresh_token, processing_polls=processing_polls)

    @asynccontextmanager
    async def lifespan(_app):
        try:
            yield
        finally:
            sim.close()

    app = FastAPI(title="SIMULATED Selling Partner API (vendor)", docs_url="/_sandbox/docs",
                  openapi_url="/_sandbox/openapi.json", redoc_url=None, lifespan=lifespan)
    app.state.sim = sim

    def answer(request: Request, body: Any, status: int, payload: dict, op: str | None = None) -> JSONResponse:
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
            return answer(request, body, 403, error("Unauthorized", "Access to requested resource is denied.",
                                                    problem), op)
        if not sim.buckets[op].take():
            return answer(request, body, 429, QUOTA_EXCEEDED, op)
        return None

    def fault_answer(request: Request, body: Any, op: str, status: int | None = None) -> JSONResponse:
        status = status or sim.fault_status()
        message = ("We encountered an internal error. Please try again." if status == 500
                   else "Service temporarily unavailable. Please try again.")
        return answer(request, body, status, error("InternalFailure" if status == 500 else "ServiceUnavailable",
                                                   message), op)

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
            return answer(request, body, 400, error("InvalidInput", "The request body is not a JSON object."), op)
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
            return answer(request, None, 404, error("NotFound", "The resource specified does not exist.",
                                                    f"transactionId {transaction_id}"), op)
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
