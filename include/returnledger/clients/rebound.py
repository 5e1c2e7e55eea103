"""ReBound client: OAuth2 client credentials, the event feed, return orders, post-hoc returns.

The login follows ReBound's public headless API (client id + secret, optional
flow key, bearer token for an hour, re-authenticate once on 401). The feed,
return-order and post-hoc endpoints follow the simulated contract in
docs/sandbox.md because ReBound's are not public; the sandbox serves exactly
this contract, so the same code runs against both.

Transient failures (5xx, 429, timeouts, dropped connections) are retried with
exponential back-off and jitter; anything else is a ReboundError at once, so a
bad request is never hammered. Events come back as the raw dicts the API
served: the caller stores them before it parses anything.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

import httpx
import msgspec
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BATCH_IDS = 200


class ReboundError(Exception):
    """ReBound answered with an error we must not retry (or retries ran out)."""

    def __init__(self, message: str, *, status: int | None = None, body: str | None = None):
        super().__init__(f"{message} (status {status}): {body[:500]}" if status is not None and body
                         else message)
        self.status = status
        self.body = body


class _Transient(ReboundError):
    """A 5xx or 429: worth another attempt."""

    def __init__(self, status: int, body: str, retry_after: float | None):
        super().__init__("ReBound is temporarily unavailable", status=status, body=body)
        self.retry_after = retry_after


@dataclass(frozen=True)
class EventPage:
    events: list[Any]   # dicts, or msgspec.Raw (each event's JSON exactly as received) with raw=True
    next_cursor: str
    has_more: bool


class _RawPage(msgspec.Struct):
    """A feed page whose events stay undecoded: the sync stores the bytes ReBound sent."""
    events: list[msgspec.Raw]
    next_cursor: str
    has_more: bool


_RAW_PAGE = msgspec.json.Decoder(_RawPage)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (_Transient, httpx.TimeoutException, httpx.TransportError))


def _utc_z(t: datetime) -> str:
    if t.tzinfo is None:
        raise ValueError(f"until must be timezone-aware, got naive {t.isoformat()}")
    t = t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{t.microsecond:06d}" if t.microsecond else "") + "Z"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _decode(response) -> Any:
    """A JSON body (msgspec: several times faster than json on event pages; same values)."""
    return msgspec.json.decode(response.content)


class ReboundClient:
    """One ReBound account (client id/secret, optional flow key); not thread-safe."""

    def __init__(self, base_url: str, client_id: str, client_secret: str, *, flow_key: str | None = None,
                 timeout: float = 10.0, page_size: int = 500, max_attempts: int = 8, backoff_max_s: float = 5.0):
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be 1..1000")
        self._client_id = client_id
        self._client_secret = client_secret
        self._flow_key = flow_key
        self.page_size = page_size
        self.max_attempts = max_attempts
        self.backoff_max_s = backoff_max_s
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout,
                                  headers={"Accept": "application/json", "User-Agent": "returnledger/0.1"})
        self._token: str | None = None
        self._token_expires = 0.0
        #: attempts and refreshes, for logs and tests
        self.stats = {"requests": 0, "retries": 0, "token_fetches": 0, "token_refreshes_on_401": 0}

    # --- plumbing ----------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        backoff = wait_exponential_jitter(initial=0.1, max=self.backoff_max_s, jitter=0.1)(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return max(backoff, min(exc.retry_after, self.backoff_max_s))
        return backoff

    def _retrying(self) -> Retrying:
        def count(_state: RetryCallState) -> None:
            self.stats["retries"] += 1

        return Retrying(stop=stop_after_attempt(self.max_attempts), wait=self._wait,
                        retry=retry_if_exception(_retryable), before_sleep=count, reraise=True)

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.status_code in RETRY_STATUSES:
            raise _Transient(response.status_code, response.text, _retry_after(response))
        return response

    def _fetch_token(self) -> str:
        data = {"grant_type": "client_credentials", "client_id": self._client_id,
                "client_secret": self._client_secret}
        if self._flow_key:
            data["flow_key"] = self._flow_key
        # one attempt: it always runs inside the caller's retry loop (no nested back-off)
        self.stats["token_fetches"] += 1
        r = self._check(self._http.post("/oauth/token", data=data))
        if r.status_code != 200:
            raise ReboundError("ReBound refused the client credentials", status=r.status_code, body=r.text)
        payload = r.json()
        ttl = float(payload.get("expires_in", 3600))
        self._token = payload["access_token"]
        # renew a little early so a token never expires between check and use
        self._token_expires = time.monotonic() + ttl - min(60.0, ttl * 0.1)
        return self._token

    def _bearer(self) -> str:
        if self._token is None or time.monotonic() >= self._token_expires:
            return self._fetch_token()
        return self._token

    def _send_once(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One attempt; a 401 refreshes the token once and repeats the request."""
        self.stats["requests"] += 1
        r = self._http.request(method, path, headers={"Authorization": f"Bearer {self._bearer()}"}, **kwargs)
        if r.status_code == 401:
            self.stats["token_refreshes_on_401"] += 1
            self._token = None
            self.stats["requests"] += 1
            r = self._http.request(method, path, headers={"Authorization": f"Bearer {self._fetch_token()}"},
                                   **kwargs)
        return self._check(r)

    def _request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs) -> httpx.Response:
        try:
            for attempt in self._retrying():
                with attempt:
                    r = self._send_once(method, path, **kwargs)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise ReboundError(f"ReBound unreachable after {self.max_attempts} attempts: {exc!r}") from exc
        if r.status_code not in ok:
            raise ReboundError(f"{method} {path} failed", status=r.status_code, body=r.text)
        return r

    # --- the API -----------------------------------------------------------------

    def iter_event_pages(self, cursor: str | None, until: datetime, *, raw: bool = False) -> Iterator[EventPage]:
        """Pages of the feed from ``cursor`` (None = the beginning) up to deliveries before ``until``.

        Store each page's events and ``next_cursor`` together before asking for the
        next one: that is what makes a crashed run resume without gaps or repeats.
        ``raw=True`` leaves each event as the JSON bytes received (``msgspec.Raw``)."""
        params = {"until": _utc_z(until), "limit": self.page_size}
        while True:
            query = dict(params, cursor=cursor) if cursor else params
            response = self._request("GET", "/v1/events", params=query)
            if raw:
                try:
                    body = _RAW_PAGE.decode(response.content)
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    raise ReboundError(f"ReBound sent an event page that is not a feed page: {exc}",
                                       status=response.status_code, body=response.text[:500]) from exc
                page = EventPage(body.events, body.next_cursor, body.has_more)
            else:
                payload = _decode(response)
                page = EventPage(payload["events"], payload["next_cursor"], bool(payload["has_more"]))
            yield page
            if not page.has_more:
                return
            if not page.events and page.next_cursor == cursor:
                raise ReboundError(f"ReBound feed made no progress at cursor {cursor!r}")
            cursor = page.next_cursor

    def get_returns(self, return_ids: Iterable[str]) -> tuple[list[dict], list[str]]:
        """Return orders by id, in batches of 200; returns (found orders, missing ids)."""
        ids = list(dict.fromkeys(i for i in return_ids if i))
        found: list[dict] = []
        # ReBound ids never hold a comma (the list separator): such an id cannot exist there
        missing = [i for i in ids if "," in i]
        askable = [i for i in ids if "," not in i]
        for start in range(0, len(askable), BATCH_IDS):
            batch = askable[start:start + BATCH_IDS]
            payload = _decode(self._request("GET", "/v1/returns", params={"ids": ",".join(batch)}))
            found.extend(payload["returns"])
            missing.extend(payload["missing"])
        return found, missing

    def get_return(self, return_id: str) -> dict | None:
        r = self._request("GET", f"/v1/returns/{return_id}", ok=(200, 404))
        return r.json() if r.status_code == 200 else None

    def create_post_hoc_return(self, *, amazon_return_id: str, returns_notice: str, rma_id: str | None, sku: str,
                               asin: str | None, quantity: int, returned_at: date | datetime | str,
                               reason: str | None = None) -> dict:
        """Record a dark return in ReBound; safe to repeat (ReBound keys it by amazon_return_id)."""
        if isinstance(returned_at, datetime):
            returned_at = returned_at.date()
        body = {"amazon_return_id": amazon_return_id, "returns_notice": returns_notice, "rma_id": rma_id,
                "sku": sku, "asin": asin, "quantity": quantity,
                "returned_at": returned_at.isoformat() if isinstance(returned_at, date) else returned_at}
        if reason is not None:
            body["reason"] = reason
        return self._request("POST", "/v1/returns", json=body, ok=(200, 201)).json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ReboundClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
