"""Signed webhooks of the simulated ReBound API (our own contract; ReBound's is not public).

Scheme, modelled on comparable returns platforms (Loop, AfterShip): the sender
POSTs the event's raw JSON bytes with headers

    X-Rebound-Timestamp: <unix seconds>
    X-Rebound-Signature: base64(HMAC-SHA256(secret, "<timestamp>." + body))

Signing the timestamp with the body stops replays of an old delivery; the
receiver rejects timestamps outside a tolerance window. Delivery is at least
once: a receiver must deduplicate by ``event_id``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpx

TIMESTAMP_HEADER = "X-Rebound-Timestamp"
SIGNATURE_HEADER = "X-Rebound-Signature"
EVENT_ID_HEADER = "X-Rebound-Event-Id"


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """base64(HMAC-SHA256(secret, f"{timestamp}." + body))."""
    message = str(int(timestamp)).encode() + b"." + body
    return base64.b64encode(hmac.new(_key(secret), message, hashlib.sha256).digest()).decode()


def verify(
    secret: str | bytes,
    timestamp: int | str | None,
    body: bytes,
    signature: str | None,
    *,
    now: float,
    tolerance_s: int = 300,
) -> bool:
    """True only for a fresh timestamp and a matching signature (constant-time compare).

    ``now`` is the receiver's clock in unix seconds, passed in so that callers and
    tests decide what time it is."""
    if not timestamp or not signature:
        return False
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs(now - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body).encode(), signature.encode())


@dataclass
class Delivery:
    """The outcome of delivering one event."""

    key: object
    delivered: bool
    attempts: int
    last_status: int | None = None
    last_error: str | None = None


@dataclass
class WebhookSender:
    """Delivers event bodies to one URL, retrying with exponential back-off.

    Retries on connection errors, timeouts and any non-2xx answer, up to
    ``max_attempts`` per event; the delay before attempt n+1 is
    ``min(backoff_max_s, backoff_s * 2**(n-1))``. Delays are parameters so tests
    run in milliseconds while the demo uses realistic ones.
    """

    url: str
    secret: str
    max_attempts: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    timeout_s: float = 5.0
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    attempts_made: int = field(default=0, init=False)

    def headers(self, body: bytes, event_id: str | None = None) -> dict[str, str]:
        ts = int(self.clock())
        h = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: sign(self.secret, ts, body),
        }
        if event_id:
            h[EVENT_ID_HEADER] = event_id
        return h

    def send_one(
        self, client: httpx.Client, key: object, body: bytes, event_id: str | None = None
    ) -> Delivery:
        status, error = None, None
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                self.sleep(min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 2)))
            self.attempts_made += 1
            try:
                # signed afresh on each attempt so a late retry does not carry a stale timestamp
                r = client.post(self.url, content=body, headers=self.headers(body, event_id))
                status, error = r.status_code, None
                if 200 <= r.status_code < 300:
                    return Delivery(key, True, attempt, status)
            except httpx.HTTPError as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"
        return Delivery(key, False, self.max_attempts, status, error)

    def deliver(self, items: Iterable[tuple[object, bytes, str | None]]) -> list[Delivery]:
        """Deliver ``(key, body, event_id)`` items in order; returns one Delivery per item."""
        with httpx.Client(timeout=self.timeout_s) as client:
            return [self.send_one(client, key, body, event_id) for key, body, event_id in items]
