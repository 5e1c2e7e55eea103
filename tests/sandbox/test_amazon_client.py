"""The production Amazon client (python-amazon-sp-api underneath) against the simulated SP-API.

Only the endpoint and LWA URL point at the simulator; everything else is the
code path that talks to Amazon.
"""

from __future__ import annotations

import copy
import csv
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from returnledger.clients.amazon import (
    AmazonAuthError,
    AmazonRequestError,
    AmazonUnavailableError,
    AmazonVendorClient,
    TransactionStatus,
)
from returnledger_dev.sandbox.server import free_port, serve_in_thread
from returnledger_dev.sandbox.spapi_sim import build_spapi_app

CREDS = dict(
    refresh_token="sandbox-refresh-token",
    lwa_client_id="sandbox-lwa-client",
    lwa_client_secret="sandbox-lwa-secret",
)
INVOICES = "/vendor/payments/v1/invoices"


@pytest.fixture
def scenario(scenarios_dir) -> dict:
    return json.loads((scenarios_dir / "small-month.json").read_text())


def with_faults(scenario: dict, **amazon) -> dict:
    sc = copy.deepcopy(scenario)
    sc["faults"] = {"amazon": amazon}
    return sc


def credit_note(scenario: dict, row: dict) -> dict:
    """A returns credit note for one Vendor Central returns row of the scenario (test data)."""
    cost = {c["sku"]: c["unit_cost"] for c in scenario["catalog"]}[row["sku"]]
    details = {
        "returnsReferenceNumber": row["returns_notice"],
        "goodsReturnDate": f"{row['returned_at']}T00:00:00Z",
        "rmaId": row["rma_id"],
        "consignorsReferenceNumber": row["vret"],
    }
    return {
        "invoiceType": "CreditNote",
        "id": f"CN-{row['amazon_return_id']}",
        "date": f"{row['returned_at']}T12:00:00Z",
        "remitToParty": {"partyId": scenario["vendor"]["party_id"]},
        "invoiceTotal": {"currencyCode": "GBP", "amount": str(Decimal(cost) * row["quantity"])},
        "creditNoteDetails": details,
        "items": [
            {
                "itemSequenceNumber": 1,
                "vendorProductIdentifier": row["sku"],
                "amazonProductIdentifier": row["asin"],
                "invoicedQuantity": {"amount": row["quantity"], "unitOfMeasure": "Eaches"},
                "netCost": {"currencyCode": "GBP", "amount": cost},
            }
        ],
    }


def notes_for(scenario: dict, n: int | None = None, exclude_listed: bool = True) -> list[dict]:
    listed = {o["returns_notice"] for o in scenario["amazon"]["credit_outcomes"]} if exclude_listed else set()
    rows = [
        r
        for r in scenario["amazon"]["returns"]
        if r["label"] == "REBOUND" and r["returns_notice"] not in listed
    ]
    return [credit_note(scenario, r) for r in rows[:n]]


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "amazon_requests.jsonl").read_text().splitlines()]


class Running:
    """One served simulator: ``client(**overrides)`` builds a wrapper pointed at it."""

    def __init__(self, app, cm, base: str, out: Path):
        self.sim, self.cm, self.base, self.out, self.clients = app.state.sim, cm, base, out, []

    def client(self, **overrides) -> AmazonVendorClient:
        c = AmazonVendorClient(self.base, lwa_url=f"{self.base}/auth/o2/token", **{**CREDS, **overrides})
        self.clients.append(c)
        return c

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        if self.cm is not None:
            self.cm.__exit__(None, None, None)
            self.cm = None


@pytest.fixture
def sandbox(scenario, tmp_path):
    """start(scenario=None, port=None, **sim_kwargs) -> Running."""
    running: list[Running] = []

    def start(sc: dict | None = None, port: int | None = None, **kwargs) -> Running:
        # these tests follow a transaction through Processing to its fate: one Processing answer first
        # (the simulator's default is 0 since it answers by time, ca6887d)
        kwargs.setdefault("processing_polls", 1)
        app = build_spapi_app(
            sc or scenario, out_dir=tmp_path / "out", landing_dir=tmp_path / "landing", **kwargs
        )
        cm = serve_in_thread(app, port=port)
        running.append(Running(app, cm, cm.__enter__(), tmp_path / "out"))
        return running[-1]

    yield start
    for r in reversed(running):
        r.stop()


def poll(fetch, tid: str, limit: int = 10) -> list[TransactionStatus]:
    seen = []
    for _ in range(limit):
        seen.append(fetch(tid))
        if seen[-1].final:
            break
    return seen


def test_credit_note_success_failure_and_inventory(sandbox, scenario):
    run = sandbox()
    client = run.client()
    ok_note = notes_for(scenario, 1)[0]
    tid = client.submit_invoices([ok_note])
    states = poll(client.get_transaction, tid)
    assert [s.status for s in states] == ["Processing", "Success"]
    assert states[-1].transaction_id == tid and states[-1].errors == []

    failing = next(o for o in scenario["amazon"]["credit_outcomes"] if o["status"] == "Failure")
    row = next(r for r in scenario["amazon"]["returns"] if r["returns_notice"] == failing["returns_notice"])
    tid2 = client.submit_invoices([credit_note(scenario, row)])
    final = poll(client.get_transaction, tid2)[-1]
    assert final.status == "Failure"
    assert final.errors[0]["code"] == failing["error"]["code"]
    assert final.errors[0]["message"] == failing["error"]["message"]
    assert f"CN-{row['amazon_return_id']}" in final.errors[0]["details"]

    sku = scenario["catalog"][5]["sku"]
    before = scenario["catalog"][5]["available"]
    itid = client.submit_inventory_update(
        scenario["vendor"]["warehouse_id"],
        selling_party_id=scenario["vendor"]["party_id"],
        items=[
            {
                "vendorProductIdentifier": sku,
                "availableQuantity": {"amount": before + 3, "unitOfMeasure": "Eaches"},
            }
        ],
    )
    assert poll(client.get_df_transaction, itid)[-1].status == "Success"
    run.sim.dump()
    with (run.out / "amazon_inventory.csv").open() as f:
        stock = {r["sku"]: int(r["available"]) for r in csv.DictReader(f)}
    assert stock[sku] == before + 3
    log = read_log(run.out)
    assert all(r["status"] in (200, 202) for r in log)
    inv_posts = [r for r in log if r["method"] == "POST" and r["path"].endswith("/items")]
    assert inv_posts[0]["body"]["inventory"]["isFullUpdate"] is False


def test_burst_is_throttled_then_retries_take_every_note_in_exactly_once(sandbox, scenario):
    sc = with_faults(scenario, throttle={"rate": 5, "burst": 5})
    run = sandbox(sc)
    notes = notes_for(sc, 30)
    assert len(notes) == 30
    # deaf to the stated plan (x-amzn-RateLimit-Limit): this test is about riding out 429s
    no_retry = run.client(rate_per_s=1000, burst=1000, max_attempts=1, learn_rate_limit=False)
    refused = []
    for note in notes:
        try:
            no_retry.submit_invoices([note])
        except AmazonUnavailableError as e:  # throttled, no retries left: not a refusal of the note
            refused.append(e)
    assert refused and all(e.status == 429 and e.errors[0]["code"] == "QuotaExceeded" for e in refused)
    assert not any(isinstance(e, AmazonRequestError) for e in refused)
    assert run.sim.summary()["credit_notes_taken_in"] == 30 - len(refused)

    # faster than the bucket on purpose (20/s against 5/s): the wrapper must ride out the 429s
    client = run.client(rate_per_s=20, burst=20, backoff_max_s=2, learn_rate_limit=False)
    tids = {n["id"]: client.submit_invoices([n]) for n in notes}
    log = read_log(run.out)
    after_first = log[len(notes) + 1 :]
    assert any(r["status"] == 429 for r in after_first), "the retrying client never met a 429"
    accepted = Counter()
    for r in log:
        if r["path"] == INVOICES and r["status"] == 202:
            accepted.update(inv["id"] for inv in r["body"]["invoices"])
    assert set(accepted) == {n["id"] for n in notes}  # zero lost
    assert run.sim.summary()["credit_notes_taken_in"] == 30  # zero doubled
    assert all(run.sim.notes[i]["transaction_id"] == tid for i, tid in tids.items())


def test_retries_survive_errors_lost_responses_and_throttling(sandbox, scenario):
    sc = with_faults(scenario, error_rate=0.1, lost_response_rate=0.05, throttle={"rate": 5, "burst": 5})
    run = sandbox(sc, seed=3)
    client = run.client(rate_per_s=8, burst=8, backoff_max_s=2)
    notes = notes_for(sc, 30)
    tids = {n["id"]: client.submit_invoices([n]) for n in notes}
    finals = {i: poll(client.get_transaction, tid)[-1].status for i, tid in list(tids.items())[:5]}
    assert set(finals.values()) == {"Success"}
    summary = run.sim.summary()
    assert summary["faults"]["error"] > 0 and summary["faults"]["lost_response"] > 0
    assert summary["credit_notes_taken_in"] == 30 and summary["credit_notes_conflicting"] == 0
    assert summary["credit_notes_resubmitted"] > 0, (
        "no lost submit answer was retried: the seed exercises nothing"
    )
    assert all(run.sim.notes[i]["transaction_id"] == tid for i, tid in tids.items())
    log = read_log(run.out)
    assert {r["status"] for r in log} >= {202, 200, 500}
    # what check.py counts: per returns notice and SKU, distinct ids taken in with 202 equal what was
    # sent once
    sent = Counter()
    for n in notes:
        sent[
            (n["creditNoteDetails"]["returnsReferenceNumber"], n["items"][0]["vendorProductIdentifier"])
        ] += n["items"][0]["invoicedQuantity"]["amount"]
    got, seen_ids = Counter(), set()
    for r in log:
        if r["path"] == INVOICES and r["status"] == 202:
            for inv in r["body"]["invoices"]:
                if inv["id"] not in seen_ids:
                    seen_ids.add(inv["id"])
                    got[
                        (
                            inv["creditNoteDetails"]["returnsReferenceNumber"],
                            inv["items"][0]["vendorProductIdentifier"],
                        )
                    ] += inv["items"][0]["invoicedQuantity"]["amount"]
    assert got == sent


def test_invalid_body_raises_without_retry(sandbox, scenario):
    run = sandbox()
    client = run.client()
    note = notes_for(scenario, 1)[0]
    del note["remitToParty"]
    with pytest.raises(AmazonRequestError) as err:
        client.submit_invoices([note])
    assert err.value.status == 400
    assert err.value.errors[0]["code"] == "InvalidInput" and "remitToParty" in err.value.errors[0]["message"]
    posts = [r for r in read_log(run.out) if r["path"] == INVOICES]
    assert [r["status"] for r in posts] == [400] and client.attempts["submitInvoices"] == 1


def test_bad_lwa_credentials_raise_without_retry(sandbox, scenario):
    run = sandbox()
    client = run.client(lwa_client_secret="wrong")
    with pytest.raises(AmazonAuthError) as err:
        client.get_transaction("anything")
    assert err.value.status == 401 and err.value.errors[0]["code"] == "invalid_client"
    assert [r["status"] for r in read_log(run.out)] == [401]


def test_exhausted_retries_keep_the_note_pending(sandbox, scenario):
    """Every answer a 5xx: the caller gets AmazonUnavailableError (retry later), never a refusal."""
    run = sandbox(with_faults(scenario, error_rate=1.0))
    client = run.client(max_attempts=3, backoff_max_s=0.05)
    with pytest.raises(AmazonUnavailableError) as err:
        client.submit_invoices(notes_for(scenario, 1))
    assert not isinstance(err.value, AmazonRequestError)
    assert err.value.status in (500, 503) and client.attempts["submitInvoices"] == 3
    assert [r["status"] in (500, 503) for r in read_log(run.out) if r["path"] == INVOICES] == [True] * 3
    assert run.sim.summary()["credit_notes_taken_in"] == 0


def test_unknown_transaction_is_not_retried(sandbox):
    run = sandbox()
    client = run.client()
    with pytest.raises(AmazonRequestError) as err:
        client.get_transaction("20260101000000-00000000-0000-0000-0000-000000000000")
    assert err.value.status == 404
    assert client.attempts["getTransaction"] == 1


def test_simulator_restart_with_a_cached_token(sandbox, scenario):
    """The library caches tokens process-wide; a restarted simulator does not know them."""
    port = free_port()
    first = sandbox(port=port)
    client = first.client()
    notes = notes_for(scenario, 2)
    client.submit_invoices([notes[0]])
    first.cm.__exit__(None, None, None)  # the simulator stops; the client (and its cached token) lives on
    first.cm = None
    second = sandbox(port=port)
    assert second.sim.summary()["tokens_issued"] == 0
    tid = client.submit_invoices([notes[1]])  # cached token refused (403), fetched anew, then 202
    assert tid and second.sim.summary()["tokens_issued"] == 1
    statuses = [r["status"] for r in read_log(second.out) if r["path"] == INVOICES]
    assert statuses == [202, 403, 202]


@pytest.mark.slow
def test_request_rate_through_the_client(sandbox, scenario, capsys):
    """Throughput of simulator + real client with throttling off (reported, with a floor)."""
    sc = with_faults(scenario, throttle={"rate": 1_000_000, "burst": 1_000_000})
    run = sandbox(sc)
    client = run.client(rate_per_s=1_000_000, burst=1_000_000)
    notes = notes_for(sc)
    tid = client.submit_invoices(notes[:1])
    n = 600
    t0 = time.perf_counter()
    for i in range(n // 2):
        client.get_transaction(tid)
        client.submit_invoices([notes[i % len(notes)]])
    sequential = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: client.get_transaction(tid), range(n)))
    parallel = n / (time.perf_counter() - t0)
    with capsys.disabled():
        print(
            f"\nSP-API simulator through AmazonVendorClient: {sequential:.0f} req/s sequential, "
            f"{parallel:.0f} req/s with 8 threads"
        )
    assert sequential > 100 and parallel > 100


# --- the usage plan: the client follows what Amazon states (x-amzn-RateLimit-Limit), issue 26 ---------
def _timed_push(run, notes, **client_kwargs) -> tuple[float, AmazonVendorClient]:
    client = run.client(backoff_max_s=2, **client_kwargs)
    t0 = time.perf_counter()
    for n in notes:
        client.submit_invoices([n])
    return time.perf_counter() - t0, client


def _throttled(run) -> int:
    return sum(1 for r in read_log(run.out) if r["path"] == INVOICES and r["status"] == 429)


def test_the_sandbox_connection_is_the_documented_plan_not_the_scenarios_throttle(scenario, tmp_path):
    from returnledger_dev.sandbox.harness import Sandbox
    from returnledger_dev.sandbox.scenario import Scenario

    sc = with_faults(scenario, throttle={"rate": 5, "burst": 5})
    sb = Sandbox(Scenario.from_dict(sc), tmp_path, tmp_path, rebound_url="", amazon_url="")
    assert (sb.amazon_extra["rate_per_s"], sb.amazon_extra["burst"]) == (10.0, 10)


def test_a_plan_below_the_default_is_learned_no_note_lost_within_10pct_of_the_known_plan(sandbox, scenario):
    sc = with_faults(scenario, throttle={"rate": 5, "burst": 5})
    notes = notes_for(sc, 30)
    known_run = sandbox(sc)
    known, _ = _timed_push(known_run, notes, rate_per_s=5, burst=5, learn_rate_limit=False)
    assert known_run.sim.summary()["credit_notes_taken_in"] == 30
    known_run.stop()
    learned_run = sandbox(sc)
    learned, client = _timed_push(learned_run, notes)  # the documented default: 10 req/s, burst 10
    summary = learned_run.sim.summary()
    assert summary["credit_notes_taken_in"] == 30 and summary["credit_notes_conflicting"] == 0
    assert learned <= 1.1 * known, (learned, known, _throttled(learned_run))
    assert client.plans.stated["submitInvoices"] == 5.0
    assert client.buckets["submitInvoices"].rate < 5.0 and client.buckets["submitInvoices"].burst == 5


def test_a_plan_above_the_default_is_learned_and_speeds_up(sandbox, scenario):
    sc = with_faults(scenario, throttle={"rate": 20, "burst": 20})
    notes = notes_for(sc, 60)
    assert len(notes) == 60
    fixed_run = sandbox(sc)
    fixed, _ = _timed_push(fixed_run, notes, learn_rate_limit=False)  # stays at the default 10 req/s
    fixed_run.stop()
    learned_run = sandbox(sc)
    learned, client = _timed_push(learned_run, notes)
    assert learned_run.sim.summary()["credit_notes_taken_in"] == 60
    assert learned <= 0.7 * fixed, (learned, fixed)
    assert client.plans.stated["submitInvoices"] == 20.0
    assert _throttled(learned_run) == 0
