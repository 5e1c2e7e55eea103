"""The production ReBound client reading the simulated feed: pages, faults, token expiry, cursors."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest

from returnledger.clients.rebound import ReboundClient, ReboundError
from returnledger_dev.sandbox.scenario import Scenario, load_scenario
from returnledger_dev.sandbox.server import free_port

CLIENT = dict(client_id="sandbox-client", client_secret="sandbox-secret")


def expected_deliveries(raw: dict, until: datetime) -> list[dict]:
    """The feed computed straight from the file, independently of the simulator's code."""
    items = raw["rebound"]["events"] + raw["rebound"]["invalid_events"]

    def when(e):
        return datetime.strptime(e.get("delivered_at") or e["occurred_at"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=UTC
        )

    order = sorted(range(len(items)), key=lambda i: (when(items[i]), i))
    out = []
    for i in order:
        if when(items[i]) >= until:
            continue
        out.append(items[i])
        if items[i].get("duplicate") is True:
            out.append(items[i])
    return out


def end_of_run(raw: dict) -> datetime:
    return datetime.combine(
        date.fromisoformat(raw["run"]["to"]) + timedelta(days=1), datetime.min.time(), tzinfo=UTC
    )


def read_all(client: ReboundClient, cursor, until, on_page=None):
    events, pages = [], 0
    for page in client.iter_event_pages(cursor, until):
        pages += 1
        events.extend(page.events)
        cursor = page.next_cursor
        if on_page:
            on_page(pages)
    return events, cursor, pages


def test_whole_feed_through_faults_and_token_expiry(generated_scenario, serve_rebound):
    path = generated_scenario(300, 11, faults=True)
    raw = json.loads(path.read_text())
    assert raw["faults"]["rebound"] == {"error_rate": 0.05, "timeout_rate": 0.01}
    until = end_of_run(raw)
    expected = expected_deliveries(raw, until)
    assert any(e.get("duplicate") for e in expected) and raw["rebound"]["invalid_events"][0] in expected

    # seed 7 draws an error and a timeout among the first dozen requests (asserted below)
    url, _app = serve_rebound(load_scenario(path), timeout_delay_s=0.8, seed=7)

    def expire_tokens(page_no):
        if page_no in (3, 9):  # every token dies mid-read; the client must log in again and go on
            assert httpx.post(f"{url}/_sandbox/expire-tokens").json()["expired"] >= 1

    with ReboundClient(url, **CLIENT, timeout=0.5, page_size=100, backoff_max_s=0.2) as client:
        events, _cursor, pages = read_all(client, None, until, expire_tokens)
        assert client.stats["token_refreshes_on_401"] == 2
        assert client.stats["retries"] >= 1

    assert events == expected  # every delivery, in order, duplicates included, exactly as in the file
    assert pages == -(-len(expected) // 100)
    stats = httpx.get(f"{url}/_sandbox/stats").json()
    injected = stats.get("fault_500", 0) + stats.get("fault_503", 0) + stats.get("fault_timeout", 0)
    assert injected >= 1 and stats["fault_timeout"] >= 1, stats
    # a page answered after the client timed out was served once more on the retry
    assert stats["events_served"] >= len(expected)


def test_heavy_faults_still_give_the_exact_feed(small_month_scenario, serve_rebound):
    raw = copy.deepcopy(small_month_scenario.raw)
    raw["faults"] = {"rebound": {"error_rate": 0.3, "timeout_rate": 0.05}}
    url, _ = serve_rebound(Scenario.from_dict(raw), timeout_delay_s=0.6, seed=1)
    until = end_of_run(raw)
    with ReboundClient(
        url, **CLIENT, timeout=0.4, page_size=40, max_attempts=12, backoff_max_s=0.05
    ) as client:
        events, _, _ = read_all(client, None, until)
        assert client.stats["retries"] >= 3
    assert events == expected_deliveries(raw, until)


@pytest.fixture
def small_month_scenario(scenarios_dir) -> Scenario:
    return load_scenario(scenarios_dir / "small-month.json")


def test_cursor_resume_equals_one_read(small_month_scenario, serve_rebound):
    raw = small_month_scenario.raw
    url, _ = serve_rebound(small_month_scenario)
    t2 = end_of_run(raw)
    t1 = datetime(2026, 10, 15, tzinfo=UTC)
    with ReboundClient(url, **CLIENT, page_size=25) as client:
        first, c1, _ = read_all(client, None, t1)
        second, c2, _ = read_all(client, c1, t2)
        at_once, c_once, _ = read_all(client, None, t2)
        assert first == expected_deliveries(raw, t1)
        assert first + second == at_once == expected_deliveries(raw, t2)
        assert c2 == c_once
        # nothing new before T2: an empty page that keeps the position
        again, c3, pages = read_all(client, c2, t2)
        assert again == [] and c3 == c2 and pages == 1
        # daily runs, as the sync makes them: each day's window from the stored cursor
        day, cursor, daily = datetime(2026, 10, 1, tzinfo=UTC), None, []
        while day <= t2:
            got, cursor, _ = read_all(client, cursor, day)
            daily.extend(got)
            day += timedelta(days=1)
        assert daily == at_once


def test_cursor_survives_a_simulator_restart(small_month_scenario, serve_rebound):
    raw = small_month_scenario.raw
    t1, t2 = datetime(2026, 10, 12, tzinfo=UTC), end_of_run(raw)
    url1, _ = serve_rebound(small_month_scenario)
    with ReboundClient(url1, **CLIENT, page_size=50) as client:
        first, c1, _ = read_all(client, None, t1)
    url2, _ = serve_rebound(load_scenario_again(small_month_scenario))
    with ReboundClient(url2, **CLIENT, page_size=50) as client:
        rest, _, _ = read_all(client, c1, t2)
    assert first + rest == expected_deliveries(raw, t2)


def load_scenario_again(s: Scenario) -> Scenario:
    return Scenario.from_dict(copy.deepcopy(s.raw))


def test_pages_respect_until_and_limit(small_month_scenario, serve_rebound):
    url, _ = serve_rebound(small_month_scenario)
    until = datetime(2026, 10, 9, 12, tzinfo=UTC)
    with ReboundClient(url, **CLIENT, page_size=7) as client:
        pages = list(client.iter_event_pages(None, until))
    assert all(len(p.events) <= 7 for p in pages)
    assert [p.has_more for p in pages] == [True] * (len(pages) - 1) + [False]
    for p in pages:
        for e in p.events:
            assert (e.get("delivered_at") or e["occurred_at"]) < "2026-10-09T12:00:00Z"


def test_events_endpoint_needs_a_bearer_token_and_valid_arguments(small_month_scenario, serve_rebound):
    url, _ = serve_rebound(small_month_scenario)
    r = httpx.get(f"{url}/v1/events", params={"until": "2026-11-01T00:00:00Z"})
    assert r.status_code == 401 and r.json() == {"error": "invalid_token"}
    r = httpx.get(
        f"{url}/v1/events",
        params={"until": "2026-11-01T00:00:00Z"},
        headers={"Authorization": "Bearer forged"},
    )
    assert r.status_code == 401
    assert (
        httpx.post(
            f"{url}/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "sandbox-client",
                "client_secret": "wrong",
            },
        ).status_code
        == 401
    )
    token = httpx.post(f"{url}/oauth/token", data={"grant_type": "client_credentials", **CLIENT}).json()
    assert token["token_type"] == "Bearer" and token["expires_in"] == 3600
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    for params in (
        {"until": "yesterday"},
        {"until": "2026-11-01T00:00:00"},
        {},
        {"until": "2026-11-01T00:00:00Z", "limit": 1001},
        {"until": "2026-11-01T00:00:00Z", "cursor": "not-a-cursor"},
    ):
        assert httpx.get(f"{url}/v1/events", params=params, headers=auth).status_code == 400, params


def test_token_ttl_runs_out(small_month_scenario, serve_rebound):
    url, _ = serve_rebound(small_month_scenario, token_ttl_s=1.5)
    token = httpx.post(f"{url}/oauth/token", data={"grant_type": "client_credentials", **CLIENT}).json()
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    params = {"until": "2026-10-05T00:00:00Z"}
    assert httpx.get(f"{url}/v1/events", params=params, headers=auth).status_code == 200
    import time

    time.sleep(1.6)
    assert httpx.get(f"{url}/v1/events", params=params, headers=auth).status_code == 401
    with ReboundClient(url, **CLIENT) as client:  # a fresh login each time is still correct
        events, _, _ = read_all(client, None, datetime(2026, 10, 5, tzinfo=UTC))
    assert events == expected_deliveries(small_month_scenario.raw, datetime(2026, 10, 5, tzinfo=UTC))


def test_client_errors_are_not_retried(small_month_scenario, serve_rebound):
    url, _ = serve_rebound(small_month_scenario)
    with ReboundClient(url, "sandbox-client", "wrong-secret") as client:
        with pytest.raises(ReboundError) as err:
            client.get_returns(["RB-7-0000000"])
        assert err.value.status == 401 and client.stats["token_fetches"] == 1
    with ReboundClient(url, **CLIENT) as client:
        with pytest.raises(ReboundError) as err:
            next(client.iter_event_pages("garbage!", datetime(2026, 11, 1, tzinfo=UTC)))
        assert err.value.status == 400 and "invalid_cursor" in err.value.body
        assert client.stats["requests"] == 1 and client.stats["retries"] == 0
        with pytest.raises(ValueError, match="timezone-aware"):
            next(client.iter_event_pages(None, datetime(2026, 11, 1)))


def test_unreachable_rebound_raises_after_bounded_retries():
    with ReboundClient(
        f"http://127.0.0.1:{free_port()}", **CLIENT, max_attempts=3, backoff_max_s=0.01
    ) as client:
        with pytest.raises(ReboundError, match="after 3 attempts"):
            next(client.iter_event_pages(None, datetime(2026, 11, 1, tzinfo=UTC)))
        assert client.stats["token_fetches"] == 3 and client.stats["retries"] == 2
