"""Webhook signatures and at-least-once delivery with back-off (simulated ReBound contract)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from returnledger_dev.sandbox.scenario import load_scenario
from returnledger_dev.sandbox.server import free_port, serve_in_thread
from returnledger_dev.sandbox.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSender, sign, verify

SECRET = "whsec-test"
BODY = b'{"event_id":"ev-1","type":"RECEIVED","return_id":"RB-1","line":1,"quantity":1}'
NOW = 1_790_000_000


def test_signature_is_base64_hmac_sha256_of_timestamp_dot_body():
    expected = base64.b64encode(hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).digest())
    assert sign(SECRET, NOW, BODY) == expected.decode()


def test_verify_accepts_only_the_genuine_fresh_delivery():
    sig = sign(SECRET, NOW, BODY)
    assert verify(SECRET, NOW, BODY, sig, now=NOW + 10)
    assert verify(SECRET, str(NOW), BODY, sig, now=NOW - 10)  # header values are strings
    assert not verify("other-secret", NOW, BODY, sig, now=NOW)  # wrong secret
    assert not verify(
        SECRET, NOW, BODY.replace(b'"quantity":1', b'"quantity":9'), sig, now=NOW
    )  # changed body
    assert not verify(SECRET, NOW + 1, BODY, sig, now=NOW)  # timestamp not the signed one
    assert not verify(SECRET, NOW, BODY, sig, now=NOW + 301)  # stale
    assert not verify(SECRET, NOW, BODY, sig, now=NOW - 301)  # from the future
    assert verify(SECRET, NOW, BODY, sig, now=NOW + 60, tolerance_s=60)
    assert not verify(SECRET, NOW, BODY, None, now=NOW)
    assert not verify(SECRET, "abc", BODY, sig, now=NOW)
    assert not verify(SECRET, NOW, BODY, sig[:-4] + "AAA=", now=NOW)


class Receiver:
    """A webhook receiver that fails the first ``fail_first`` requests and verifies every signature."""

    def __init__(self, fail_first: int = 0, status: int = 500):
        self.fail_first, self.status = fail_first, status
        self.calls, self.accepted, self.bad_signatures = 0, [], 0
        self.app = FastAPI()

        @self.app.post("/hook")
        async def hook(request: Request) -> Response:
            self.calls += 1
            body = await request.body()
            if not verify(
                SECRET,
                request.headers.get(TIMESTAMP_HEADER),
                body,
                request.headers.get(SIGNATURE_HEADER),
                now=time.time(),
            ):
                self.bad_signatures += 1
                return Response(status_code=401)
            if self.calls <= self.fail_first:
                return Response(status_code=self.status)
            self.accepted.append(json.loads(body))
            return Response(status_code=204)


def test_sender_retries_a_failing_receiver_then_delivers():
    receiver = Receiver(fail_first=2)
    slept = []
    with serve_in_thread(receiver.app) as url:
        sender = WebhookSender(f"{url}/hook", SECRET, max_attempts=5, backoff_s=0.01, sleep=slept.append)
        results = sender.deliver([("k1", BODY, "ev-1"), ("k2", BODY.replace(b"ev-1", b"ev-2"), "ev-2")])
    assert [(d.key, d.delivered, d.attempts) for d in results] == [("k1", True, 3), ("k2", True, 1)]
    assert slept == [0.01, 0.02]  # exponential back-off between attempts
    assert [e["event_id"] for e in receiver.accepted] == ["ev-1", "ev-2"]
    assert receiver.bad_signatures == 0 and receiver.calls == 4


def test_sender_gives_up_after_bounded_attempts():
    receiver = Receiver(fail_first=10**6, status=503)
    with serve_in_thread(receiver.app) as url:
        sender = WebhookSender(f"{url}/hook", SECRET, max_attempts=3, backoff_s=0.001)
        (result,) = sender.deliver([("k", BODY, "ev-1")])
    assert not result.delivered and result.attempts == 3 and result.last_status == 503
    assert receiver.calls == 3
    dead = WebhookSender(f"http://127.0.0.1:{free_port()}/hook", SECRET, max_attempts=2, backoff_s=0.001)
    (result,) = dead.deliver([("k", BODY, None)])
    assert not result.delivered and result.last_error and "ConnectError" in result.last_error


def test_simulator_pushes_the_feed_at_least_once(scenarios_dir, serve_rebound):
    scenario = load_scenario(scenarios_dir / "small-month.json")
    receiver = Receiver(fail_first=1)
    with serve_in_thread(receiver.app) as hook_url:
        url, _ = serve_rebound(
            scenario, webhook_url=f"{hook_url}/hook", webhook_secret=SECRET, webhook_backoff_s=0.01
        )
        first = httpx.post(
            f"{url}/_sandbox/webhooks/deliver", params={"until": "2026-10-10T00:00:00Z"}, timeout=30
        ).json()
        again = httpx.post(
            f"{url}/_sandbox/webhooks/deliver", params={"until": "2026-10-10T00:00:00Z"}, timeout=30
        ).json()
        rest = httpx.post(
            f"{url}/_sandbox/webhooks/deliver", params={"until": "2026-12-01T00:00:00Z"}, timeout=30
        ).json()
    raw = scenario.raw
    items = raw["rebound"]["events"] + raw["rebound"]["invalid_events"]
    order = sorted(
        range(len(items)), key=lambda i: (items[i].get("delivered_at") or items[i]["occurred_at"], i)
    )
    expected = [items[i] for i in order for _ in range(2 if items[i].get("duplicate") else 1)]
    before = [e for e in expected if (e.get("delivered_at") or e["occurred_at"]) < "2026-10-10T00:00:00Z"]
    assert first["delivered"] == len(before) and first["failed"] == 0
    assert first["attempts"] == len(before) + 1  # the first push was refused once, then retried
    assert again["delivered"] == 0 and again["pending_before"] == 0  # acknowledged ones are not resent
    assert rest["delivered"] == len(expected) - len(before)
    assert receiver.accepted == expected and receiver.bad_signatures == 0


def test_deliver_needs_a_configured_webhook(scenarios_dir, serve_rebound):
    url, _ = serve_rebound(load_scenario(scenarios_dir / "small-month.json"))
    r = httpx.post(f"{url}/_sandbox/webhooks/deliver", params={"until": "2026-10-10T00:00:00Z"})
    assert r.status_code == 409


@pytest.mark.parametrize("when", [datetime(2026, 10, 1, tzinfo=UTC)])
def test_signed_headers_carry_the_sender_clock(when):
    sender = WebhookSender("http://unused", SECRET, clock=lambda: when.timestamp())
    h = sender.headers(BODY, "ev-1")
    assert h[TIMESTAMP_HEADER] == str(int(when.timestamp()))
    assert verify(SECRET, h[TIMESTAMP_HEADER], BODY, h[SIGNATURE_HEADER], now=when.timestamp())
