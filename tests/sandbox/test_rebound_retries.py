"""The ReBound client's retries run on tenacity (issue 24), with the behaviour the hand-written loop had:
what retries (5xx/429, timeouts, dropped connections), the back-off (0.1 s doubling plus up to 0.1 s of
jitter, capped at ``backoff_max_s``), ``max_attempts``, and a 4xx failing at once."""

from __future__ import annotations

import httpx
import pytest
import tenacity

from returnledger.clients.rebound import ReboundClient
from returnledger.clients.rebound_feed import ReboundError, ReboundUnavailableError

CLIENT = dict(client_id="sandbox-client", client_secret="sandbox-secret")
RETURN = {"return_id": "RB-1", "lines": []}


def client_answering(answers: list, **kwargs) -> tuple[ReboundClient, list[float], list[str]]:
    """A client whose ReBound answers ``answers`` in turn (an exception is raised as the transport's)."""
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        asked.append(request.url.path)
        step = answers.pop(0)
        if isinstance(step, Exception):
            raise step
        return httpx.Response(step, json=RETURN if step == 200 else {"error": "x"})

    client = ReboundClient("http://rebound.test", **CLIENT, transport=httpx.MockTransport(answer), **kwargs)
    slept: list[float] = []
    client.sleep = slept.append
    return client, slept, asked


@pytest.fixture
def tenacity_calls(monkeypatch):
    """Counts the requests that went through tenacity's Retrying."""
    calls: list[object] = []
    original = tenacity.Retrying.__call__

    def spy(self, fn, *args, **kwargs):
        calls.append(fn)
        return original(self, fn, *args, **kwargs)

    monkeypatch.setattr(tenacity.Retrying, "__call__", spy)
    return calls


def test_transient_failures_are_retried_through_tenacity_with_the_same_back_off(tenacity_calls):
    client, slept, asked = client_answering([503, 429, httpx.ConnectError("dropped"), 200])
    assert client.get_return("RB-1") == RETURN
    assert tenacity_calls, "the request did not go through tenacity"
    assert len(asked) == 4 and len(slept) == 3 and client.stats["retries"] == 3
    for n, wait in enumerate(slept):
        assert 0.1 * 2**n <= wait <= 0.1 * 2**n + 0.1, (n, wait)
    assert client.stats["waited_s"] == pytest.approx(sum(slept))


def test_max_attempts_then_the_last_answer_and_a_4xx_at_once(tenacity_calls):
    client, slept, asked = client_answering([500] * 3, max_attempts=3, backoff_max_s=0.15)
    with pytest.raises(ReboundUnavailableError) as err:
        client.get_return("RB-1")
    assert err.value.status == 500 and len(asked) == 3 and len(slept) == 2 and max(slept) <= 0.15
    client, slept, asked = client_answering([httpx.ReadTimeout("slow")] * 2, max_attempts=2)
    with pytest.raises(ReboundUnavailableError, match="unreachable after 2 attempts"):
        client.get_return("RB-1")
    client, slept, asked = client_answering([422])
    with pytest.raises(ReboundError) as err:
        client.create_post_hoc_return(
            amazon_return_id="AR-1",
            returns_notice="RN-1",
            rma_id=None,
            sku="S",
            asin=None,
            quantity=1,
            returned_at="2026-10-05",
        )
    assert err.value.status == 422 and len(asked) == 1 and slept == []
    assert tenacity_calls
