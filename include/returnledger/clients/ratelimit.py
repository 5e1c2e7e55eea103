"""A token bucket: Amazon's usage plan, used by the SP-API client (to wait) and the simulator (to refuse)."""

from __future__ import annotations

import threading
import time


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
