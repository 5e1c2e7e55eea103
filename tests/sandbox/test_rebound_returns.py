"""Return orders in batches and post-hoc returns for dark returns, client and simulator together."""

from __future__ import annotations

import json

import httpx
import pytest

from returnledger.clients.rebound import ReboundClient, ReboundError
from returnledger_dev.sandbox.scenario import load_scenario

CLIENT = dict(client_id="sandbox-client", client_secret="sandbox-secret")


def test_get_returns_in_batches_reports_unknown_ids(generated_scenario, serve_rebound):
    path = generated_scenario(300, 11)
    raw = json.loads(path.read_text())
    url, _ = serve_rebound(load_scenario(path))
    known = [r["return_id"] for r in raw["rebound"]["returns"]]
    unknown = ["RB-NOPE-1", "RB-NOPE-2", "x,y"]
    wanted = known[:150] + unknown[:2] + known[150:] + [unknown[2], known[0]]  # a repeat is asked once
    before = httpx.get(f"{url}/_sandbox/stats").json()["requests"]
    with ReboundClient(url, **CLIENT) as client:
        found, missing = client.get_returns(wanted)
    assert httpx.get(f"{url}/_sandbox/stats").json()["requests"] - before == 2  # 302 askable ids: 200 + 102
    by_id = {r["return_id"]: r for r in raw["rebound"]["returns"]}
    assert [r["return_id"] for r in found] == known
    assert all(r == by_id[r["return_id"]] for r in found)  # served as in the file
    assert sorted(missing) == sorted(unknown)


def test_single_return_and_limits(generated_scenario, serve_rebound):
    path = generated_scenario(300, 11)
    raw = json.loads(path.read_text())
    url, _ = serve_rebound(load_scenario(path))
    with ReboundClient(url, **CLIENT) as client:
        assert client.get_return(raw["rebound"]["returns"][5]["return_id"]) == raw["rebound"]["returns"][5]
        assert client.get_return("RB-NOPE") is None
        token = client._bearer()
    auth = {"Authorization": f"Bearer {token}"}
    r = httpx.get(f"{url}/v1/returns/RB-NOPE", headers=auth)
    assert r.status_code == 404 and r.json() == {"error": "not_found"}
    ids = ",".join(r["return_id"] for r in raw["rebound"]["returns"][:201])
    assert httpx.get(f"{url}/v1/returns", params={"ids": ids}, headers=auth).status_code == 400


POST_HOC = dict(
    amazon_return_id="AR-APRL-7-000001",
    returns_notice="RNAPRL07000001",
    rma_id="RMAAPRL07000001",
    sku="SKU-00004",
    asin="B007000004",
    quantity=1,
    returned_at="2026-10-09",
)


def test_post_hoc_return_is_idempotent_and_logged_once(small_month, serve_rebound, tmp_path):
    out = tmp_path / "run"
    url, _ = serve_rebound(small_month, out_dir=out)
    with ReboundClient(url, **CLIENT) as client:
        first = client.create_post_hoc_return(**POST_HOC, reason="CHANGED_MIND")
        again = client.create_post_hoc_return(**POST_HOC, reason="CHANGED_MIND")
        found, missing = client.get_returns([first["return_id"], "RB-NOPE"])
    assert first["return_id"] == "RB-POSTHOC-AR-APRL-7-000001"
    assert again == first and found == [first] and missing == ["RB-NOPE"]
    assert first["amazon_refs"]["returns_notice"] == "RNAPRL07000001"
    assert first["lines"] == [
        {"line": 1, "sku": "SKU-00004", "asin": "B007000004", "quantity": 1, "reason": "CHANGED_MIND"}
    ]
    lines = (out / "rebound_created_returns.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [first]
    stats = httpx.get(f"{url}/_sandbox/stats").json()
    assert stats["returns_created"] == 1 and stats["returns_create_repeats"] == 1


def test_post_hoc_statuses_and_validation(small_month, serve_rebound, tmp_path):
    url, _ = serve_rebound(small_month, out_dir=tmp_path / "run")
    token = httpx.post(f"{url}/oauth/token", data={"grant_type": "client_credentials", **CLIENT}).json()
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    assert httpx.post(f"{url}/v1/returns", json=POST_HOC, headers=auth).status_code == 201
    assert httpx.post(f"{url}/v1/returns", json=POST_HOC, headers=auth).status_code == 200
    bad = dict(POST_HOC, quantity=0)
    r = httpx.post(f"{url}/v1/returns", json=bad, headers=auth)
    assert r.status_code == 422 and "quantity" in r.json()["message"]
    with ReboundClient(url, **CLIENT) as client:
        with pytest.raises(ReboundError) as err:
            client.create_post_hoc_return(**{**POST_HOC, "amazon_return_id": "AR-2", "returned_at": "soon"})
        assert err.value.status == 422 and client.stats["retries"] == 0
    assert len((tmp_path / "run" / "rebound_created_returns.jsonl").read_text().splitlines()) == 1


def test_post_hoc_retried_after_a_lost_answer_is_still_one_record(small_month, serve_rebound, tmp_path):
    """Every request first times out (answered late, but applied): the retry must not create a second
    record."""
    url, _ = serve_rebound(small_month, out_dir=tmp_path / "run", timeout_delay_s=0.5)
    httpx.post(f"{url}/_sandbox/faults", json={"timeout_rate": 1.0})
    with (
        ReboundClient(url, **CLIENT, timeout=0.2, max_attempts=2, backoff_max_s=0.6) as client,
        pytest.raises(ReboundError, match="after 2 attempts"),
    ):
        client.create_post_hoc_return(**POST_HOC)
    httpx.post(f"{url}/_sandbox/faults", json={"timeout_rate": 0.0})
    with ReboundClient(url, **CLIENT) as client:
        record = client.create_post_hoc_return(**POST_HOC)
        assert record["return_id"] == "RB-POSTHOC-AR-APRL-7-000001"
    lines = (tmp_path / "run" / "rebound_created_returns.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [record]


@pytest.fixture
def small_month(scenarios_dir):
    return load_scenario(scenarios_dir / "small-month.json")
