"""A token bucket: Amazon's usage plan, used by the SP-API client (to wait) and the simulator (to refuse)."""

from __future__ import annotations

import threading
import time


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = float(rate), max(1, int(burst))
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
        """Wait for a token (the client side: spend time rather than Amazon's 429s)."""
        while True:
            with self.lock:
                self._refill()
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)

    def drain(self) -> None:
        """Amazon said 429: spend what we thought we had, so the next call waits a refill."""
        with self.lock:
            self.tokens = min(self.tokens, 0.0)
            self.updated = time.monotonic()
