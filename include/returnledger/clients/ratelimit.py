"""A token bucket: Amazon's usage plan, used by the SP-API client (to wait) and the simulator (to refuse);
the client's plans per operation, following what Amazon states (``x-amzn-RateLimit-Limit``)."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

RATE_LIMIT_HEADER = "x-amzn-RateLimit-Limit"


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up.

    ``reserve`` is for the client side: ``acquire`` spends a token only once ``1 + reserve`` are saved up
    (at most ``burst``), so a request that reaches the server's bucket up to ``reserve / rate`` seconds
    sooner after the previous one than it left us (network or server jitter) still finds a token there.
    The sustained rate stays ``rate``: the reserve is set aside once, at the start.
    """

    def __init__(self, rate: float, burst: int, reserve: float = 0.0):
        self.rate, self.burst = float(rate), max(1, int(burst))
        self.reserve = min(max(0.0, float(reserve)), self.burst - 1.0)
        self.tokens = float(self.burst)
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def retune(self, rate: float, burst: int | None = None, reserve: float | None = None) -> None:
        """Follow another usage plan from now on (tokens saved up so far are kept, up to the new burst)."""
        with self.lock:
            self._refill()
            self.rate = float(rate)
            if burst is not None:
                self.burst = max(1, int(burst))
            if reserve is not None:
                self.reserve = max(0.0, float(reserve))
            self.reserve = min(self.reserve, self.burst - 1.0)
            self.tokens = min(self.tokens, float(self.burst))

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self) -> bool:
        """Spend a token if there is one (the server side: otherwise answer 429)."""
        with self.lock:
            self._refill()
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False

    def acquire(self) -> None:
        """Wait for a token, keeping the reserve (the client side: spend time rather than Amazon's 429s)."""
        need = 1.0 + self.reserve
        while True:
            with self.lock:
                self._refill()
                if self.tokens >= need:
                    self.tokens -= 1
                    return
                wait = (need - self.tokens) / self.rate
            time.sleep(wait)

    def drain(self) -> None:
        """Amazon said 429: spend what we thought we had, so the next call waits a refill."""
        with self.lock:
            self.tokens = min(self.tokens, 0.0)
            self.updated = time.monotonic()


def stated_rate(headers) -> float | None:
    """The usage plan's requests per second Amazon states in an answer's headers (None: not stated)."""
    if not headers:
        return None
    value = headers.get(RATE_LIMIT_HEADER)
    if value is None and isinstance(headers, dict):
        value = {str(k).lower(): v for k, v in headers.items()}.get(RATE_LIMIT_HEADER.lower())
    try:
        rate = float(value)
    except (TypeError, ValueError):
        return None
    return rate if rate > 0 else None


class UsagePlans:
    """One client-side bucket per operation: starts at the configured plan (Amazon's documented default),
    then follows the rate Amazon states in each answer, higher or lower, less ``margin``.

    Each bucket keeps ``jitter_s`` worth of tokens in hand (TokenBucket.reserve). Amazon states the rate,
    not the burst: a plan below the configured one scales the burst down with it (a 429 after an idle
    spell costs one back-off), a higher one keeps the configured burst.
    """

    def __init__(self, operations, rate: float, burst: int, *, jitter_s: float, margin: float, learn: bool):
        self.jitter_s, self.margin, self.enabled = jitter_s, min(0.5, max(0.0, float(margin))), learn
        # Amazon's bucket refills at the same rate as ours: keep jitter_s worth of tokens in hand, so that
        # requests arriving closer together than we sent them are not throttled
        self.buckets = {op: TokenBucket(rate, burst, rate * jitter_s) for op in operations}
        self.plan = {op: (float(rate), int(burst)) for op in operations}  # what we started from
        self.stated: dict[str, float] = {}  # operation -> the rate Amazon last stated for it

    def learn(self, op: str, headers) -> None:
        rate = stated_rate(headers) if self.enabled else None
        if rate is None or self.stated.get(op) == rate or op not in self.buckets:
            return
        self.stated[op] = rate
        base_rate, base_burst = self.plan[op]
        burst = base_burst if rate >= base_rate else max(1, round(base_burst * rate / base_rate))
        follow = rate * (1.0 - self.margin)
        self.buckets[op].retune(follow, burst, follow * self.jitter_s)
        log.info(
            "Amazon %s: usage plan %g req/s stated; following %.3g req/s, burst %d", op, rate, follow, burst
        )
