"""``amazon.duplicate_credit_note``: how the simulated SP-API answers a credit note whose id it already
took in. Driven through the production client (python-amazon-sp-api underneath), the way the sync
sends notes: one note per call, polled until final."""

from __future__ import annotations

import copy
import json
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from returnledger.clients.amazon import AmazonVendorClient, TransactionStatus
from returnledger_dev.sandbox.scenario import Scenario
from returnledger_dev.sandbox.scenario_rules import ScenarioError
from returnledger_dev.sandbox.server import serve_in_thread
from returnledger_dev.sandbox.spapi_models import request_validator
from returnledger_dev.sandbox.spapi_sim import build_spapi_app

sys.path.insert(0, str(Path(__file__).parent))
import test_amazon_client as _client_tests

CREDS = dict(
    refresh_token="sandbox-refresh-token",
    lwa_client_id="sandbox-lwa-client",
    lwa_client_secret="sandbox-lwa-secret",
)
LWA = {
    "grant_type": "refresh_token",
    "refresh_token": "sandbox-refresh-token",
    "client_id": "sandbox-lwa-client",
    "client_secret": "sandbox-lwa-secret",
}
INVOICES = "/vendor/payments/v1/invoices"


@pytest.fixture
def scenario(scenarios_dir) -> dict:
    return json.loads((scenarios_dir / "small-month.json").read_text())


@pytest.fixture(scope="module")
def check():
    """The scenario checker as a module: the functions a scenario run is judged with."""
    from returnledger_dev.scenarios import check as module

    return module


UNSET = object()


def variant(scenario: dict, mode=UNSET, **faults) -> dict:
    """A copy of the scenario with ``amazon.duplicate_credit_note`` = mode (left out when UNSET)."""
    sc = copy.deepcopy(scenario)
    if mode is not UNSET:
        sc["amazon"]["duplicate_credit_note"] = mode
    sc["faults"] = {"amazon": faults} if faults else {}
    return sc


credit_note = _client_tests.credit_note  # one test credit note for the sandbox tests


def notes_for(scenario: dict, n: int | None = None) -> list[dict]:
    listed = {o["returns_notice"] for o in scenario["amazon"]["credit_outcomes"]}
    rows = [
        r
        for r in scenario["amazon"]["returns"]
        if r["label"] == "REBOUND" and r["returns_notice"] not in listed
    ]
    return [credit_note(scenario, r) for r in rows[:n]]


def failing_note(scenario: dict) -> tuple[dict, dict]:
    outcome = next(o for o in scenario["amazon"]["credit_outcomes"] if o["status"] == "Failure")
    row = next(r for r in scenario["amazon"]["returns"] if r["returns_notice"] == outcome["returns_notice"])
    return credit_note(scenario, row), outcome


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "amazon_requests.jsonl").read_text().splitlines()]


@pytest.fixture
def sandbox(tmp_path):
    """start(scenario, client_kwargs=None, **sim_kwargs) -> (client, sim, base_url, out_dir); stopped
    after."""
    running = []

    def start(sc: dict, client_kwargs: dict | None = None, **kwargs):
        out = tmp_path / f"out{len(running)}"
        # these tests follow a transaction through Processing to its fate: one Processing answer first
        # (the simulator's default is 0 since it answers by time, ca6887d)
        kwargs.setdefault("processing_polls", 1)
        app = build_spapi_app(sc, out_dir=out, landing_dir=tmp_path / "landing", **kwargs)
        cm = serve_in_thread(app)
        base = cm.__enter__()
        client = AmazonVendorClient(base, lwa_url=f"{base}/auth/o2/token", **CREDS, **(client_kwargs or {}))
        running.append((cm, client))
        return client, app.state.sim, base, out

    yield start
    for cm, client in reversed(running):
        client.close()
        cm.__exit__(None, None, None)


def poll(client: AmazonVendorClient, tid: str, limit: int = 10) -> TransactionStatus:
    for _ in range(limit):
        state = client.get_transaction(tid)
        if state.final:
            return state
    return state


def duplicate_error(note_id: str, held_tid: str) -> dict:
    return {
        "code": "DuplicateInvoiceNumber",
        "message": f"invoice {note_id} was already submitted",
        "details": held_tid,
    }


# --- the scenario key -------------------------------------------------------------------------------


def test_the_loader_accepts_the_two_modes_and_defaults_to_same_note(scenario):
    assert Scenario.from_dict(copy.deepcopy(scenario)).amazon.duplicate_credit_note == "same_note"
    for mode in ("same_note", "reject"):
        assert Scenario.from_dict(variant(scenario, mode)).amazon.duplicate_credit_note == mode


@pytest.mark.parametrize("value", ["Reject", "ignore", "", 1, None, True])
def test_the_loader_refuses_any_other_value(scenario, value):
    with pytest.raises(ScenarioError) as err:
        Scenario.from_dict(variant(scenario, value))
    assert str(err.value).startswith(
        f"amazon.duplicate_credit_note: unknown value {value!r} (expected one of 'same_note', 'reject')"
    ), err.value


def test_the_simulator_refuses_an_unknown_mode_too(scenario, tmp_path):
    with pytest.raises(ValueError, match=r"amazon\.duplicate_credit_note: unknown value 'twice'"):
        build_spapi_app(variant(scenario, "twice"), out_dir=tmp_path)


# --- same_note (the default) --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [UNSET, "same_note"])
def test_same_note_answers_a_known_id_with_its_first_transaction(sandbox, scenario, mode):
    client, sim, _, _out = sandbox(variant(scenario, mode))
    note = notes_for(scenario, 1)[0]
    tid = client.submit_invoices([note])
    assert client.submit_invoices([note]) == tid
    assert poll(client, tid).status == "Success"
    assert client.submit_invoices([note]) == tid  # also after it succeeded
    summary = sim.summary()
    assert summary["duplicate_credit_note"] == "same_note"
    assert summary["credit_notes_taken_in"] == 1 and summary["credit_notes_resubmitted"] == 2
    assert summary["credit_notes_rejected_as_duplicate"] == 0


def test_same_note_judges_a_failed_note_afresh(sandbox, scenario):
    client, sim, _, _ = sandbox(variant(scenario))
    note, outcome = failing_note(scenario)
    first = client.submit_invoices([note])
    assert poll(client, first).status == "Failure"
    again = client.submit_invoices([note])
    assert again != first  # not the failed transaction again: a new one, judged by the scenario
    final = poll(client, again)
    assert final.status == "Failure" and final.errors[0]["code"] == outcome["error"]["code"]
    assert sim.notes[note["id"]]["transaction_id"] == again
    assert poll(client, first).status == "Failure"  # the first still answers


# --- reject -------------------------------------------------------------------------------------------


def test_reject_fails_a_known_id_in_a_new_transaction_naming_the_first(sandbox, scenario, check):
    client, sim, base, out = sandbox(variant(scenario, "reject"))
    note = notes_for(scenario, 1)[0]
    first = client.submit_invoices([note])
    assert poll(client, first).status == "Success"

    second = client.submit_invoices([note])  # a 202: Amazon takes the request, then refuses the note
    assert second != first
    states = [client.get_transaction(second) for _ in range(2)]
    assert [s.status for s in states] == ["Processing", "Failure"]  # processed like any other transaction
    assert states[-1].transaction_id == second
    assert states[-1].errors == [duplicate_error(note["id"], first)]
    # the earlier note and its transaction stand
    assert client.get_transaction(first).status == "Success"
    assert sim.notes[note["id"]]["transaction_id"] == first and not sim.notes[note["id"]]["failed"]

    # sent before the first transaction was ever polled: still a duplicate (taken in on the 202)
    other = notes_for(scenario, 2)[1]
    t1 = client.submit_invoices([other])
    t2 = client.submit_invoices([other])
    assert poll(client, t2).errors == [duplicate_error(other["id"], t1)]
    assert poll(client, t1).status == "Success"

    summary = sim.summary()
    assert summary["duplicate_credit_note"] == "reject"
    assert summary["credit_notes_taken_in"] == 2 and summary["credit_notes_rejected_as_duplicate"] == 2
    # the answer validates against Amazon's model, errors included
    token = httpx.post(f"{base}/auth/o2/token", data=LWA).json()["access_token"]
    answer = httpx.get(
        f"{base}/vendor/transactions/v1/transactions/{second}", headers={"x-amz-access-token": token}
    ).json()
    validator = request_validator("vendorTransactionStatus.json", "GetTransactionResponse")
    assert not list(validator.iter_errors(answer))
    assert answer["payload"]["transactionStatus"]["errors"] == [duplicate_error(note["id"], first)]
    # check.py counts each note once: distinct ids taken in with a 202
    log = read_log(out)
    assert [r["status"] for r in log if r["path"] == INVOICES] == [202, 202, 202, 202]
    credits = check.credits_from_requests(log)
    assert sum(c["quantity"] for c in credits.values()) == sum(
        n["items"][0]["invoicedQuantity"]["amount"] for n in (note, other)
    )
    assert check.model_problems(log) == []


def test_reject_judges_a_failed_note_afresh(sandbox, scenario):
    """A note whose transaction failed was never taken in: sent again it gets the scenario's verdict
    again, not DuplicateInvoiceNumber."""
    client, sim, _, _ = sandbox(variant(scenario, "reject"))
    note, outcome = failing_note(scenario)
    first = client.submit_invoices([note])
    second = client.submit_invoices([note])  # even before the first was polled: its fate is Failure
    for tid in (first, second):
        final = poll(client, tid)
        assert final.status == "Failure" and [e["code"] for e in final.errors] == [outcome["error"]["code"]]
    assert first != second and sim.summary()["credit_notes_rejected_as_duplicate"] == 0
    assert sim.summary()["credit_notes_failed"] == 1


def test_reject_a_mixed_batch_fails_whole_and_takes_nothing_new_in(sandbox, scenario):
    client, sim, _, _ = sandbox(variant(scenario, "reject"))
    known, new = notes_for(scenario, 2)
    held = client.submit_invoices([known])
    mixed = client.submit_invoices([known, new])
    final = poll(client, mixed)
    assert final.status == "Failure" and final.errors == [duplicate_error(known["id"], held)]
    assert new["id"] not in sim.notes
    alone = client.submit_invoices([new])  # the new note was not taken in by the failed batch
    assert poll(client, alone).status == "Success"
    assert sim.notes[new["id"]]["transaction_id"] == alone


def test_reject_with_a_stuck_note_is_still_a_duplicate(sandbox, scenario):
    """A transaction that never resolves (Processing for ever) did not end in Failure: its note is taken
    in."""
    client, _sim, _, _ = sandbox(variant(scenario, "reject"))
    stuck = next(o for o in scenario["amazon"]["credit_outcomes"] if o["status"] == "Processing")
    row = next(r for r in scenario["amazon"]["returns"] if r["returns_notice"] == stuck["returns_notice"])
    note = credit_note(scenario, row)
    first = client.submit_invoices([note])
    assert client.get_transaction(first).status == "Processing"
    again = client.submit_invoices([note])
    assert poll(client, again).errors == [duplicate_error(note["id"], first)]
    assert client.get_transaction(first).status == "Processing"


def test_reject_after_a_lost_response_points_at_the_submission_that_took_the_note_in(sandbox, scenario):
    """A lost response (applied, then 500) took the note in: the retry is refused as a duplicate
    whose details name the lost submission's transaction, and that one can be polled."""
    client, sim, base, _out = sandbox(variant(scenario, "reject", lost_response_rate=1.0))
    token = httpx.post(f"{base}/auth/o2/token", data=LWA).json()["access_token"]
    note = notes_for(scenario, 1)[0]
    r = httpx.post(f"{base}{INVOICES}", json={"invoices": [note]}, headers={"x-amz-access-token": token})
    assert r.status_code == 500  # the caller never learns the transaction id
    lost_tid = sim.notes[note["id"]]["transaction_id"]
    sim.lost_rate = 0.0
    retry = client.submit_invoices([note])
    assert retry != lost_tid
    assert poll(client, retry).errors == [duplicate_error(note["id"], lost_tid)]
    assert poll(client, lost_tid).status == "Success"


def test_reject_under_faults_gives_every_note_once(sandbox, scenario, check):
    """Errors and lost responses with the production client's retries: every note ends taken in once;
    a retry after a lost response is refused as a duplicate naming a transaction that succeeds, and
    check.py's credits equal each note counted once."""
    sc = variant(
        scenario, "reject", error_rate=0.1, lost_response_rate=0.1, throttle={"rate": 100000, "burst": 100000}
    )  # throttling is test_amazon_client's business
    client, sim, _, out = sandbox(
        sc, client_kwargs={"backoff_max_s": 0.2, "rate_per_s": 1000, "burst": 1000}, seed=3
    )
    notes = notes_for(sc, 30)
    rejected = 0
    for note in notes:
        final = poll(client, client.submit_invoices([note]))
        if final.status == "Failure":
            assert [e["code"] for e in final.errors] == ["DuplicateInvoiceNumber"], final
            held = final.errors[0]["details"]
            assert held == sim.notes[note["id"]]["transaction_id"]
            assert poll(client, held).status == "Success"
            rejected += 1
        else:
            assert final.status == "Success"
    summary = sim.summary()
    assert summary["faults"]["lost_response"] > 0 and rejected > 0, "the seed exercises no lost response"
    assert summary["credit_notes_taken_in"] == 30 and summary["credit_notes_failed"] == 0
    # a refusal's own answer can be lost too; the client's retry is then refused once more
    assert summary["credit_notes_rejected_as_duplicate"] >= rejected
    log = read_log(out)
    sent = Counter()
    for n in notes:
        item = n["items"][0]
        sent[f"{n['creditNoteDetails']['returnsReferenceNumber']}|{item['vendorProductIdentifier']}"] += item[
            "invoicedQuantity"
        ]["amount"]
    got = check.credits_from_requests(log)
    assert {k: v["quantity"] for k, v in got.items()} == dict(sent)
    assert check.model_problems(log) == []
