"""The simulated Amazon side's state: tokens, credit notes and their transactions, stock, the request
log, and how the scenario's outcomes and faults decide each answer (see spapi_sim for the HTTP side)."""

from __future__ import annotations

import csv
import json
import os
import random
import secrets
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from returnledger.clients.ratelimit import TokenBucket
from returnledger.reconciliation.amazon_export import COLUMNS, export_name  # the export's columns, one home
from returnledger_dev.sandbox.scenario_rules import DUPLICATE_CREDIT_NOTE_MODES
from returnledger_dev.sandbox.spapi_models import request_validator

# operation -> (default rate per second, default burst), from Amazon's usage plans (domain.md)
OPERATIONS = {
    "submitInvoices": (10.0, 10),
    "getTransaction": (10.0, 20),
    "submitInventoryUpdate": (10.0, 10),
    "getTransactionStatus": (10.0, 10),
}
DUPLICATE_CODE = "DuplicateInvoiceNumber"
#: knobs for benches and cluster runs (the simulators run in processes of their own): seconds a transaction
#: answers Processing after its submission ("30" or a range "20-90"), and the usage plan ("20/20": every
#: operation at 20 req/s, burst 20; or "getTransaction=20/20,submitInvoices=20/10")
PROCESSING_S_ENV = "RETURNLEDGER_SIM_PROCESSING_S"
USAGE_PLAN_ENV = "RETURNLEDGER_SIM_USAGE_PLAN"


def parse_processing_s(value) -> tuple[float, float]:
    """``30`` / ``"30"`` / ``"20-90"`` / ``(20, 90)`` -> (low, high) seconds."""
    if value is None or value == "":
        return 0.0, 0.0
    if isinstance(value, (int, float)):
        return float(value), float(value)
    if isinstance(value, (tuple, list)):
        lo, hi = value
        return float(lo), float(hi)
    lo, _, hi = str(value).partition("-")
    return float(lo), float(hi or lo)


def parse_usage_plan(value) -> dict[str, tuple[float, int]]:
    """``"20/20"`` (every operation) or ``"op=rate/burst,..."`` or a dict -> operation -> (rate, burst)."""
    if not value:
        return {}
    if isinstance(value, dict):
        return {op: (float(r), int(b)) for op, (r, b) in value.items()}
    plan = {}
    for part in str(value).split(","):
        op, _, rb = part.strip().rpartition("=")
        rate, _, burst = rb.partition("/")
        for name in [op] if op else OPERATIONS:
            plan[name] = (float(rate), int(burst or float(rate)))
    return plan


def export_rows_by_period(scenario: dict) -> dict[str, list[dict]]:
    """``amazon.returns`` split into the monthly exports: a row exists from its ``returned_at``, so it is
    in the export of the month it was returned in (scenarios README, "Periods"). Every month a close of the
    scenario imports has an export, empty when nothing was returned in it."""
    run = scenario.get("run") or {}
    closes = run.get("closes") or [{"period": run.get("close_period", "")}]
    out: dict[str, list[dict]] = {c["period"]: [] for c in closes if c.get("period")}
    for row in (scenario.get("amazon") or {}).get("returns") or []:
        out.setdefault(str(row.get("returned_at") or "")[:7], []).append(row)
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

    def __init__(
        self,
        scenario: dict,
        *,
        out_dir: Path,
        seed: int = 0,
        landing_dir: Path | None = None,
        lwa_client_id: str = "sandbox-lwa-client",
        lwa_client_secret: str = "sandbox-lwa-secret",
        refresh_token: str = "sandbox-refresh-token",
        processing_polls: int = 0,
        processing_s=None,
        usage_plan=None,
    ):
        self.scenario = scenario
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.landing_dir = Path(landing_dir) if landing_dir else None
        self.lwa = (lwa_client_id, lwa_client_secret, refresh_token)
        self.processing_polls = processing_polls
        # a transaction answers Processing until this many seconds after its submission (and its first
        # ``processing_polls`` polls): 0 by default, so scenarios and demos stay fast
        self.processing_s = parse_processing_s(
            processing_s if processing_s is not None else os.environ.get(PROCESSING_S_ENV)
        )
        self.lock = threading.RLock()
        self.rng = random.Random(seed)
        self.delay_rng = random.Random(seed + 1)  # processing delays: the fault draws stay as they were
        amazon = scenario.get("amazon") or {}
        self.outcomes = {o["returns_notice"]: o for o in amazon.get("credit_outcomes") or []}
        self.duplicate_mode = amazon.get("duplicate_credit_note", "same_note")
        if self.duplicate_mode not in DUPLICATE_CREDIT_NOTE_MODES:
            raise ValueError(
                f"amazon.duplicate_credit_note: unknown value {self.duplicate_mode!r} "
                f"(expected one of {', '.join(map(repr, DUPLICATE_CREDIT_NOTE_MODES))})"
            )
        faults = ((scenario.get("faults") or {}).get("amazon")) or {}
        self.error_rate = float(faults.get("error_rate") or 0)
        self.lost_rate = float(faults.get("lost_response_rate") or 0)
        # FAULT (not Amazon's documented behaviour, which names nothing either way): "empty" answers a
        # duplicate credit-note id under "reject" with empty ``details``, so the refusal names no transaction
        self.duplicate_details = faults.get("duplicate_details") or "named"
        if self.duplicate_details not in ("named", "empty"):
            raise ValueError(
                f"faults.amazon.duplicate_details: unknown value {self.duplicate_details!r} "
                "(expected 'named' or 'empty')"
            )
        # the usage plan per operation (stated in every answer's x-amzn-RateLimit-Limit): Amazon's
        # documented default, the scenario's faults.amazon.throttle, or the caller's (bench) plan
        throttle = faults.get("throttle")
        plan = parse_usage_plan(usage_plan if usage_plan is not None else os.environ.get(USAGE_PLAN_ENV))
        self.buckets = {}
        for op, (rate, burst) in OPERATIONS.items():
            if throttle:
                rate, burst = throttle.get("rate", rate), throttle.get("burst", burst)
            rate, burst = plan.get(op, (rate, burst))
            self.buckets[op] = TokenBucket(rate, burst)
        self.tokens: dict[str, float] = {}  # access token -> expiry (monotonic seconds)
        self.asin = {c["sku"]: c.get("asin", "") for c in scenario.get("catalog") or []}
        self.stock = {c["sku"]: int(c.get("available") or 0) for c in scenario.get("catalog") or []}
        # credit-note id -> {invoice, transaction_id, notice, failed}: the latest submission that took the
        # note in; ``failed`` when that transaction ends in Failure (the id is then free to be judged afresh)
        self.notes: dict[str, dict] = {}
        # transactionId -> {kind, note_ids, polls, fate: Success|Failure|Processing, errors};
        # the fate is fixed
        # when the transaction is created (outcomes are the scenario's), polls only reveal it
        self.transactions: dict[str, dict] = {}
        self.stats = Counter()
        self.validators = {
            "submitInvoices": request_validator("vendorInvoices.json", "SubmitInvoicesRequest"),
            "submitInventoryUpdate": request_validator(
                "vendorDirectFulfillmentInventoryV1.json", "SubmitInventoryUpdateRequest"
            ),
        }
        self.log_path = self.out_dir / "amazon_requests.jsonl"
        self.log_file = self.log_path.open("a", encoding="utf-8")
        self.write_returns_export()

    # --- outputs -------------------------------------------------------------------
    def log(self, method: str, path: str, body: Any, status: int) -> None:
        line = json.dumps(
            {
                "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "method": method,
                "path": path,
                "body": body,
                "status": status,
            },
            separators=(",", ":"),
        )
        with self.lock:
            if self.log_file.closed:  # served again after a shutdown
                self.log_file = self.log_path.open("a", encoding="utf-8")
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def write_returns_export(self) -> Path | None:
        """The Vendor Central returns exports, as the CSVs a vendor downloads, into the landing folder:
        one per month, each with the rows returned (``returned_at``) in that month, for every month a
        close of the scenario needs and every month with rows; the close period's path is returned."""
        if self.landing_dir is None:
            return None
        self.landing_dir.mkdir(parents=True, exist_ok=True)
        for period, rows in export_rows_by_period(self.scenario).items():
            path = self.landing_dir / export_name(period)
            tmp = path.with_suffix(".csv.tmp")
            with tmp.open("w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(COLUMNS)
                for row in rows:
                    w.writerow(["" if row.get(c) is None else row.get(c) for c in COLUMNS])
            tmp.replace(path)
        return self.landing_dir / export_name((self.scenario.get("run") or {}).get("close_period", ""))

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
            return {
                "requests": by_op,
                "credit_notes_taken_in": len(self.notes),
                "credit_notes_failed": sum(1 for n in self.notes.values() if n["failed"]),
                "credit_notes_resubmitted": self.stats["resubmitted"],
                "credit_notes_conflicting": self.stats["conflicting"],
                "credit_notes_rejected_as_duplicate": self.stats["duplicate_rejected"],
                "duplicate_credit_note": self.duplicate_mode,
                "transactions": len(self.transactions),
                "tokens_issued": self.stats["tokens"],
                "faults": {"error": self.stats["fault:error"], "lost_response": self.stats["fault:lost"]},
                "usage_plan": {op: [b.rate, b.burst] for op, b in self.buckets.items()},
                "processing_s": list(self.processing_s),
                "polls": {"processing": self.stats["polls_processing"], "ready": self.stats["polls_ready"]},
            }

    def close(self) -> None:
        with self.lock:
            if not self.log_file.closed:
                self.log_file.close()

    # --- LWA -----------------------------------------------------------------------
    def issue_token(self, form: dict[str, str]) -> tuple[int, dict]:
        client_id, client_secret, refresh = self.lwa
        if form.get("grant_type") != "refresh_token":
            return 400, {
                "error": "unsupported_grant_type",
                "error_description": "Only refresh_token is supported",
            }
        if form.get("client_id") != client_id or form.get("client_secret") != client_secret:
            return 401, {"error": "invalid_client", "error_description": "Client authentication failed"}
        if form.get("refresh_token") != refresh:
            return 400, {
                "error": "invalid_grant",
                "error_description": "The request has an invalid grant parameter : refresh_token",
            }
        token = "Atza|sandbox-" + secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = time.monotonic() + 3600
            self.stats["tokens"] += 1
        return 200, {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": 3600,
            "refresh_token": refresh,
        }

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
                errors.append(
                    {
                        "code": err.get("code", "InvalidInput"),
                        "message": err.get("message", "credit note refused"),
                        "details": f"creditNoteId={note_id}; returnsReferenceNumber={notice}",
                    }
                )
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
                errors = [
                    {
                        "code": DUPLICATE_CODE,
                        "message": f"invoice {i} was already submitted",
                        "details": held[i]["transaction_id"] if self.duplicate_details == "named" else "",
                    }
                    for i in ids
                    if i in held
                ]
                self.stats["duplicate_rejected"] += len(errors)
                self.transactions[tid] = {
                    "kind": "invoices",
                    "note_ids": ids,
                    "polls": 0,
                    "ready_at": self.ready_at(),
                    "fate": "Failure",
                    "errors": errors,
                }
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
                self.notes[inv["id"]] = {
                    "invoice": inv,
                    "transaction_id": tid,
                    "notice": returns_notice_of(inv),
                    "failed": False,
                }
            fate, errors = self.judge(ids)
            if fate == "Failure":  # the batch fails as a whole: its new notes are not taken in
                for note_id in fresh:
                    self.notes[note_id]["failed"] = True
            self.transactions[tid] = {
                "kind": "invoices",
                "note_ids": ids,
                "polls": 0,
                "ready_at": self.ready_at(),
                "fate": fate,
                "errors": errors,
            }
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
            self.transactions[tid] = {
                "kind": "inventory",
                "note_ids": [],
                "polls": 0,
                "ready_at": self.ready_at(),
                "fate": "Success",
                "errors": [],
            }
            return tid

    def ready_at(self) -> float:
        """When a transaction submitted now is processed (monotonic seconds): ``processing_s`` from now."""
        lo, hi = self.processing_s
        return time.monotonic() + (lo if hi <= lo else self.delay_rng.uniform(lo, hi))

    def transaction_state(self, tid: str, kind: str) -> dict | None:
        """Status of a transaction after one more poll: ``Processing`` for the first ``processing_polls``
        polls and until ``processing_s`` after its submission, then its fate (Success, or Failure with its
        errors; a stuck one stays Processing)."""
        with self.lock:
            tx = self.transactions.get(tid)
            if tx is None or tx["kind"] != kind:
                return None
            tx["polls"] += 1
            self.stats["polls_processing" if time.monotonic() < tx.get("ready_at", 0) else "polls_ready"] += 1
            if (
                tx["polls"] <= self.processing_polls
                or time.monotonic() < tx.get("ready_at", 0)
                or tx["fate"] == "Processing"
            ):
                return {"transactionId": tid, "status": "Processing"}
            if tx["fate"] == "Failure":
                return {"transactionId": tid, "status": "Failure", "errors": [dict(e) for e in tx["errors"]]}
            return {"transactionId": tid, "status": "Success"}
