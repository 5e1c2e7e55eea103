"""The simulated SP-API on the wire: LWA, auth, model validation, throttling, faults, outputs.

These talk HTTP to a served simulator (httpx, and the raw python-amazon-sp-api
classes for throttling); the wrapper's own behaviour is in test_amazon_client.py.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from returnledger_dev.sandbox.server import serve_in_thread
from returnledger_dev.sandbox.spapi_models import MODELS_DIR, request_validator
from returnledger_dev.sandbox.spapi_sim import build_spapi_app

LWA = {
    "grant_type": "refresh_token",
    "refresh_token": "sandbox-refresh-token",
    "client_id": "sandbox-lwa-client",
    "client_secret": "sandbox-lwa-secret",
}
#: sha256 of Amazon's published models (amazon-models, Apache-2.0) that the simulator copies
PUBLISHED_MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "amazon-models.sha256"


@pytest.fixture
def scenario(scenarios_dir) -> dict:
    return json.loads((scenarios_dir / "small-month.json").read_text())


def credit_note(scenario: dict, row: dict, note_id: str | None = None) -> dict:
    """A returns credit note for one Vendor Central returns row of the scenario (test data)."""
    cost = {c["sku"]: c["unit_cost"] for c in scenario["catalog"]}[row["sku"]]
    total = f"{float(cost) * row['quantity']:.2f}"
    details = {
        "returnsReferenceNumber": row["returns_notice"],
        "goodsReturnDate": f"{row['returned_at']}T00:00:00Z",
        "rmaId": row["rma_id"],
        "consignorsReferenceNumber": row["vret"],
    }
    return {
        "invoiceType": "CreditNote",
        "id": note_id or f"CN-{row['amazon_return_id']}",
        "date": f"{row['returned_at']}T12:00:00Z",
        "remitToParty": {"partyId": scenario["vendor"]["party_id"]},
        "invoiceTotal": {"currencyCode": "GBP", "amount": total},
        "creditNoteDetails": details,
        "items": [
            {
                "itemSequenceNumber": 1,
                "vendorProductIdentifier": row["sku"],
                "amazonProductIdentifier": row["asin"],
                "creditNoteDetails": details,
                "invoicedQuantity": {"amount": row["quantity"], "unitOfMeasure": "Eaches"},
                "netCost": {"currencyCode": "GBP", "amount": cost},
            }
        ],
    }


def rebound_rows(scenario: dict) -> list[dict]:
    return [r for r in scenario["amazon"]["returns"] if r["label"] == "REBOUND"]


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "amazon_requests.jsonl").read_text().splitlines()]


@pytest.fixture
def served(scenario, tmp_path):
    """Serve a simulator for a (possibly modified) scenario; yields (base_url, httpx client with a token,
    sim)."""
    stack = []

    def start(sc: dict | None = None, **kwargs):
        # these tests follow a transaction through Processing to its fate: one Processing answer first
        # (the simulator's default is 0 since it answers by time, ca6887d)
        kwargs.setdefault("processing_polls", 1)
        app = build_spapi_app(
            sc or scenario, out_dir=tmp_path / "out", landing_dir=tmp_path / "landing", **kwargs
        )
        cm = serve_in_thread(app)
        base = cm.__enter__()
        stack.append(cm)
        http = httpx.Client(base_url=base, timeout=10)
        token = http.post("/auth/o2/token", data=LWA).json()["access_token"]
        http.headers["x-amz-access-token"] = token
        return base, http, app.state.sim

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


def test_model_copies_match_amazon_models():
    published = dict(
        reversed(line.split()) for line in PUBLISHED_MODELS.read_text().splitlines() if line.strip()
    )
    copies = {name: hashlib.sha256((MODELS_DIR / name).read_bytes()).hexdigest() for name in published}
    assert copies == published


def test_lwa_token_endpoint(served, tmp_path):
    base, _http, _sim = served()
    ok = httpx.post(f"{base}/auth/o2/token", data=LWA)
    assert ok.status_code == 200
    body = ok.json()
    assert (
        body["token_type"] == "bearer"
        and body["expires_in"] == 3600
        and body["access_token"].startswith("Atza|")
    )
    bad_secret = httpx.post(f"{base}/auth/o2/token", data=dict(LWA, client_secret="nope"))
    assert bad_secret.status_code == 401 and bad_secret.json()["error"] == "invalid_client"
    bad_grant = httpx.post(f"{base}/auth/o2/token", data=dict(LWA, refresh_token="Atzr|stolen"))
    assert bad_grant.status_code == 400 and bad_grant.json()["error"] == "invalid_grant"
    assert (
        httpx.post(f"{base}/auth/o2/token", data=dict(LWA, grant_type="client_credentials")).json()["error"]
        == "unsupported_grant_type"
    )
    # the token form carries secrets: logged without its body
    token_lines = [r for r in read_log(tmp_path / "out") if r["path"] == "/auth/o2/token"]
    assert [r["status"] for r in token_lines] == [200, 200, 401, 400, 400]
    assert all(r["body"] is None for r in token_lines)


def test_vendor_paths_need_a_valid_token(served, scenario):
    base, http, sim = served()
    note = credit_note(scenario, rebound_rows(scenario)[0])
    for headers in ({}, {"x-amz-access-token": "Atza|made-up"}):
        r = httpx.post(f"{base}/vendor/payments/v1/invoices", json={"invoices": [note]}, headers=headers)
        assert r.status_code == 403
        err = r.json()["errors"][0]
        assert err["code"] == "Unauthorized" and set(err) == {"code", "message", "details"}
    assert sim.summary()["credit_notes_taken_in"] == 0
    assert http.post("/vendor/payments/v1/invoices", json={"invoices": [note]}).status_code == 202


def test_invalid_bodies_get_400_with_amazon_errors(served, scenario):
    _base, http, sim = served()
    note = credit_note(scenario, rebound_rows(scenario)[0])
    cases = {
        "remitToParty": {k: v for k, v in note.items() if k != "remitToParty"},
        "invoiceType": dict(note, invoiceType="DebitNote"),
        "amount": dict(note, invoiceTotal={"currencyCode": "GBP", "amount": "9,50"}),
        "date": dict(note, date="05/10/2026"),
        "invoicedQuantity": dict(
            note, items=[dict(note["items"][0], invoicedQuantity={"amount": 0, "unitOfMeasure": "Eaches"})]
        ),
    }
    for needle, bad in cases.items():
        r = http.post("/vendor/payments/v1/invoices", json={"invoices": [bad]})
        assert r.status_code == 400, needle
        errors = r.json()["errors"]
        assert errors and all(
            e["code"] == "InvalidInput" and {"code", "message", "details"} <= set(e) for e in errors
        )
        assert any(needle in e["message"] or needle in e["details"] for e in errors), (needle, errors)
    r = http.post(
        "/vendor/payments/v1/invoices", content=b"not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "InvalidInput"
    inv_bad = {"inventory": {"sellingParty": {"partyId": "VNDR1"}, "items": []}}  # isFullUpdate missing
    r = http.post("/vendor/directFulfillment/inventory/v1/warehouses/UK-HUB-1/items", json=inv_bad)
    assert r.status_code == 400 and "isFullUpdate" in r.json()["errors"][0]["message"]
    assert sim.summary()["credit_notes_taken_in"] == 0


def test_responses_follow_amazon_models(served, scenario):
    """Answers validate against the response definitions of the same published models."""
    _base, http, _sim = served()
    rows = rebound_rows(scenario)
    failing = scenario["amazon"]["credit_outcomes"][0]
    assert failing["status"] == "Failure"
    bad_row = next(r for r in rows if r["returns_notice"] == failing["returns_notice"])
    checks = [
        ("vendorInvoices.json", "SubmitInvoicesResponse"),
        ("vendorTransactionStatus.json", "GetTransactionResponse"),
        ("vendorDirectFulfillmentInventoryV1.json", "SubmitInventoryUpdateResponse"),
        ("vendorDirectFulfillmentTransactions_2021-12-28.json", "TransactionStatus"),
    ]
    v = {d: request_validator(f, d) for f, d in checks}
    seen = []
    for row in (rows[0], bad_row):
        r = http.post("/vendor/payments/v1/invoices", json={"invoices": [credit_note(scenario, row)]})
        assert r.status_code == 202 and not list(v["SubmitInvoicesResponse"].iter_errors(r.json()))
        for _ in range(2):
            t = http.get(f"/vendor/transactions/v1/transactions/{r.json()['payload']['transactionId']}")
            assert t.status_code == 200 and not list(v["GetTransactionResponse"].iter_errors(t.json()))
            seen.append(t.json()["payload"]["transactionStatus"])
    assert [s["status"] for s in seen] == ["Processing", "Success", "Processing", "Failure"]
    assert seen[-1]["errors"][0]["code"] == failing["error"]["code"]
    assert seen[-1]["errors"][0]["message"] == failing["error"]["message"]
    body = {
        "inventory": {
            "sellingParty": {"partyId": "VNDR1"},
            "isFullUpdate": False,
            "items": [
                {
                    "vendorProductIdentifier": "SKU-00001",
                    "availableQuantity": {"amount": 3, "unitOfMeasure": "Eaches"},
                }
            ],
        }
    }
    r = http.post("/vendor/directFulfillment/inventory/v1/warehouses/UK-HUB-1/items", json=body)
    assert r.status_code == 202 and not list(v["SubmitInventoryUpdateResponse"].iter_errors(r.json()))
    assert r.headers["x-amzn-RateLimit-Limit"] == "10" and r.headers["x-amzn-RequestId"]
    tid = r.json()["payload"]["transactionId"]
    states = []
    for _ in range(2):
        t = http.get(f"/vendor/directFulfillment/transactions/2021-12-28/transactions/{tid}")
        assert t.status_code == 200 and not list(v["TransactionStatus"].iter_errors(t.json()))
        states.append(t.json()["transactionStatus"]["status"])
    assert states == ["Processing", "Success"]
    # an unknown transaction, or one of the other kind, is a 404 with the errors body
    for path in (
        f"/vendor/transactions/v1/transactions/{tid}",
        "/vendor/directFulfillment/transactions/2021-12-28/transactions/nope",
    ):
        r = http.get(path)
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NotFound"


def test_processing_outcome_never_resolves(served, scenario):
    _base, http, _sim = served(processing_polls=0)
    stuck = next(o for o in scenario["amazon"]["credit_outcomes"] if o["status"] == "Processing")
    row = next(r for r in rebound_rows(scenario) if r["returns_notice"] == stuck["returns_notice"])
    tid = http.post("/vendor/payments/v1/invoices", json={"invoices": [credit_note(scenario, row)]}).json()[
        "payload"
    ]["transactionId"]
    statuses = {
        http.get(f"/vendor/transactions/v1/transactions/{tid}").json()["payload"]["transactionStatus"][
            "status"
        ]
        for _ in range(5)
    }
    assert statuses == {"Processing"}


def test_a_transaction_answers_processing_for_a_time_after_submission(served, scenario):
    """Issue 26: Processing for ``processing_s`` seconds after submission, not for a number of polls."""
    _base, http, sim = served(processing_polls=0, processing_s=1.0)
    row = next(r for r in rebound_rows(scenario) if r["returns_notice"] not in _listed(scenario))
    t0 = time.monotonic()
    tid = http.post("/vendor/payments/v1/invoices", json={"invoices": [credit_note(scenario, row)]}).json()[
        "payload"
    ]["transactionId"]

    def status() -> str:
        got = http.get(f"/vendor/transactions/v1/transactions/{tid}").json()["payload"]
        return got["transactionStatus"]["status"]

    seen = [status(), status()]
    assert time.monotonic() - t0 < 1.0 and seen == ["Processing", "Processing"]
    time.sleep(max(0.0, 1.05 - (time.monotonic() - t0)))
    assert status() == "Success"
    assert sim.summary()["polls"] == {"processing": 2, "ready": 1}


def test_the_usage_plan_is_a_knob_and_is_stated_in_every_answer(served, scenario, monkeypatch):
    monkeypatch.setenv("RETURNLEDGER_SIM_USAGE_PLAN", "getTransaction=20/20,submitInvoices=15/10")
    _base, http, sim = served()
    row = next(r for r in rebound_rows(scenario) if r["returns_notice"] not in _listed(scenario))
    r = http.post("/vendor/payments/v1/invoices", json={"invoices": [credit_note(scenario, row)]})
    assert r.headers["x-amzn-RateLimit-Limit"] == "15"
    tid = r.json()["payload"]["transactionId"]
    assert http.get(f"/vendor/transactions/v1/transactions/{tid}").headers["x-amzn-RateLimit-Limit"] == "20"
    assert sim.summary()["usage_plan"]["submitInventoryUpdate"] == [10.0, 10]


def _listed(scenario: dict) -> set[str]:
    return {o["returns_notice"] for o in scenario["amazon"]["credit_outcomes"]}


def test_same_credit_note_id_is_the_same_credit_note(served, scenario):
    _base, http, sim = served()
    rows = rebound_rows(scenario)[:3]
    batch = [credit_note(scenario, r) for r in rows]
    first = http.post("/vendor/payments/v1/invoices", json={"invoices": batch}).json()["payload"][
        "transactionId"
    ]
    again = http.post("/vendor/payments/v1/invoices", json={"invoices": batch}).json()["payload"][
        "transactionId"
    ]
    one = http.post("/vendor/payments/v1/invoices", json={"invoices": batch[:1]}).json()["payload"][
        "transactionId"
    ]
    assert again == first == one
    # a body that adds a new note is a new transaction; the known notes are not taken in twice
    extra = credit_note(scenario, rebound_rows(scenario)[3])
    mixed = http.post("/vendor/payments/v1/invoices", json={"invoices": [*batch, extra]}).json()["payload"][
        "transactionId"
    ]
    assert mixed != first
    summary = sim.summary()
    assert summary["credit_notes_taken_in"] == 4 and summary["credit_notes_conflicting"] == 0


def test_inventory_update_sets_absolute_stock_and_dump(served, scenario, tmp_path):
    _base, http, _sim = served()
    sku = scenario["catalog"][2]["sku"]
    items = [
        {"vendorProductIdentifier": sku, "availableQuantity": {"amount": 4321, "unitOfMeasure": "Eaches"}},
        {
            "vendorProductIdentifier": "NEW-SKU-1",
            "availableQuantity": {"amount": 6, "unitOfMeasure": "Eaches"},
        },
    ]
    body = {"inventory": {"sellingParty": {"partyId": "VNDR1"}, "isFullUpdate": False, "items": items}}
    for _ in range(2):  # absolute quantities: sending twice changes nothing more
        assert (
            http.post(
                "/vendor/directFulfillment/inventory/v1/warehouses/UK-HUB-1/items", json=body
            ).status_code
            == 202
        )
    assert http.post("/_sandbox/dump").status_code == 200
    with (tmp_path / "out" / "amazon_inventory.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["sku", "asin", "available"]
    got = {r["sku"]: int(r["available"]) for r in rows}
    want = {c["sku"]: c["available"] for c in scenario["catalog"]} | {sku: 4321, "NEW-SKU-1": 6}
    assert got == want
    assert [r["sku"] for r in rows] == sorted(got)


def test_vendor_central_returns_export(served, scenario, tmp_path):
    served()
    path = tmp_path / "landing" / f"vendor_central_returns_{scenario['run']['close_period']}.csv"
    with path.open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == [
        "amazon_return_id",
        "returns_notice",
        "rma_id",
        "vret",
        "asin",
        "sku",
        "quantity",
        "label",
        "returned_at",
        "charged_amount",
    ]
    assert len(rows) == len(scenario["amazon"]["returns"])
    by_id = {r["amazon_return_id"]: r for r in rows}
    for src in scenario["amazon"]["returns"]:
        got = by_id[src["amazon_return_id"]]
        assert got["charged_amount"] == src.get("charged_amount", "")
        assert (got["returns_notice"], got["sku"], int(got["quantity"]), got["label"]) == (
            src["returns_notice"],
            src["sku"],
            src["quantity"],
            src["label"],
        )
    assert {r["label"] for r in rows} == {"REBOUND", "APRL"}


def test_throttling_answers_429_like_amazon(served, scenario):
    """The raw python-amazon-sp-api class, no retries: a burst beyond the bucket is throttled."""
    from sp_api.api import VendorInvoices
    from sp_api.base.exceptions import SellingApiRequestThrottledException

    from returnledger.clients.amazon_auth import Marketplace as _Marketplace
    from returnledger.clients.amazon_auth import token_client_class

    sc = copy.deepcopy(scenario)
    sc["faults"] = {"amazon": {"throttle": {"rate": 5, "burst": 5}}}
    base, _http, sim = served(sc)
    api = VendorInvoices(
        _Marketplace(base, "A1F83G8C2ARO7P", "eu"),
        credentials={
            "refresh_token": LWA["refresh_token"],
            "lwa_app_id": LWA["client_id"],
            "lwa_client_secret": LWA["client_secret"],
        },
        auth_token_client_class=token_client_class(base + "/auth/o2/token"),
    )
    taken, throttled = 0, []
    for row in rebound_rows(sc)[:30]:
        try:
            api.submit_invoices({"invoices": [credit_note(sc, row)]})
            taken += 1
        except SellingApiRequestThrottledException as e:
            throttled.append(e)
    assert throttled and 5 <= taken < 30
    assert throttled[0].amzn_code == "QuotaExceeded"
    assert throttled[0].message == "You exceeded your quota for the requested resource."
    assert throttled[0].headers["x-amzn-RateLimit-Limit"] == "5"
    assert sim.summary()["credit_notes_taken_in"] == taken
    api.close()


def test_request_log_is_complete_under_concurrency(served, scenario, tmp_path):
    sc = copy.deepcopy(scenario)
    sc["faults"] = {"amazon": {"throttle": {"rate": 100000, "burst": 100000}}}
    base, http, _sim = served(sc)
    rows = rebound_rows(sc)
    statuses: list[int] = []

    def worker(chunk):
        with httpx.Client(base_url=base, headers=dict(http.headers), timeout=10) as c:
            for row in chunk:
                statuses.append(
                    c.post(
                        "/vendor/payments/v1/invoices", json={"invoices": [credit_note(sc, row)]}
                    ).status_code
                )

    threads = [threading.Thread(target=worker, args=(rows[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logged = [r for r in read_log(tmp_path / "out") if r["path"] == "/vendor/payments/v1/invoices"]
    assert len(logged) == len(rows) == len(statuses) and set(statuses) == {202}
    assert {r["body"]["invoices"][0]["id"] for r in logged} == {f"CN-{r['amazon_return_id']}" for r in rows}


def test_faults_are_deterministic_and_lost_responses_apply(served, scenario, tmp_path):
    sc = copy.deepcopy(scenario)
    sc["faults"] = {
        "amazon": {
            "error_rate": 0.2,
            "lost_response_rate": 0.2,
            "throttle": {"rate": 100000, "burst": 100000},
        }
    }
    runs = []
    for _ in range(2):
        base, http, sim = served(sc, seed=11)
        answers = []
        for row in rebound_rows(sc)[:40]:
            answers.append(
                http.post(
                    "/vendor/payments/v1/invoices", json={"invoices": [credit_note(sc, row)]}
                ).status_code
            )
        runs.append((answers, sim.summary()))
    (a1, s1), (a2, _s2) = runs
    assert a1 == a2, "same seed, same requests: same faults"
    assert s1["faults"]["error"] > 0 and s1["faults"]["lost_response"] > 0
    assert set(a1) <= {202, 500, 503}
    # a lost response was applied (taken in), an error was not
    assert s1["credit_notes_taken_in"] == a1.count(202) + s1["faults"]["lost_response"]
    assert httpx.get(f"{base}/_sandbox/health").json()["status"] == "ok"


def test_each_month_closed_has_its_export_with_the_rows_returned_in_it(tmp_path):
    from returnledger_dev.sandbox.spapi_state import SpApiSimulator

    def row(arid: str, returned_at: str) -> dict:
        return {
            "amazon_return_id": arid,
            "returns_notice": f"RN-{arid}",
            "sku": "SKU-1",
            "asin": "B1",
            "quantity": 1,
            "label": "APRL",
            "returned_at": returned_at,
        }

    scenario = {
        "run": {
            "from": "2026-10-01",
            "to": "2027-01-03",
            "close_period": "2026-12",
            "closes": [
                {"period": "2026-10", "on": "2026-11-03"},
                {"period": "2026-11", "on": "2026-12-03"},
                {"period": "2026-12", "on": "2027-01-03"},
            ],
        },
        "catalog": [],
        "amazon": {"returns": [row("A1", "2026-10-31"), row("A2", "2026-11-01"), row("A3", "2027-01-02")]},
    }
    sim = SpApiSimulator(scenario, out_dir=tmp_path / "out", landing_dir=tmp_path / "landing")
    try:
        exports = {}
        for path in sorted((tmp_path / "landing").glob("*.csv")):
            with path.open() as f:
                exports[path.name] = [r["amazon_return_id"] for r in csv.DictReader(f)]
    finally:
        sim.close()
    # a row exists from its returned_at: it is in the export of its month, and only there
    assert exports == {
        "vendor_central_returns_2026-10.csv": ["A1"],
        "vendor_central_returns_2026-11.csv": ["A2"],
        "vendor_central_returns_2026-12.csv": [],
        "vendor_central_returns_2027-01.csv": ["A3"],
    }
