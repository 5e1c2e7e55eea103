"""ReBound client: OAuth2 client credentials, the event feed, return orders, post-hoc returns.

The login follows ReBound's public headless API (client id + secret, optional
flow key, bearer token for an hour, re-authenticate once on 401). The feed,
return-order and post-hoc endpoints follow the simulated contract in
docs/sandbox.md because ReBound's are not public; the sandbox serves exactly
this contract, so the same code runs against both.

Transient failures (5xx, 429, timeouts, dropped connections) are retried (tenacity) with
exponential back-off and jitter, honouring ``Retry-After`` up to a bound and
within a total wait budget; anything else is a ReboundError at once, so a bad
request is never hammered. Events come back as the raw dicts the API served
(or, with ``raw=True``, as the exact bytes of each event): the caller stores
them before it parses anything. A page the fast decoder refuses (a lone
surrogate escape, say) is split into per-event byte slices instead of being
refused as a whole, and a feed that stops advancing raises FeedStalledError
instead of looping.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from typing import Any

import httpx
import msgspec
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from returnledger.clients.rebound_feed import (
    EventPage,
    FeedStalledError,
    ReboundError,
    ReboundUnavailableError,
    _Transient,
    decode_event_page,
)
from returnledger.clients.retry_after import parse_retry_after

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: what another attempt can fix: a 5xx or 429 (_Transient), a timeout, a dropped connection
RETRYABLE = (_Transient, httpx.TimeoutException, httpx.TransportError)
BATCH_IDS = 200


def _utc_z(t: datetime) -> str:
    if t.tzinfo is None:
        raise ValueError(f"until must be timezone-aware, got naive {t.isoformat()}")
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{t.microsecond:06d}" if t.microsecond else "") + "Z"


def _retry_after(response: httpx.Response) -> float | None:
    return parse_retry_after(response.headers.get("retry-after"))


def _decode(response) -> Any:
    """A JSON body (msgspec: several times faster than json; same values). A body msgspec refuses
    is read with the standard library (lone surrogate escapes); one that is not JSON at all is a
    ReboundError."""
    try:
        return msgspec.json.decode(response.content)
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass
    try:
        return json.loads(response.content)
    except ValueError as exc:
        raise ReboundError(
            f"ReBound answered {response.request.method} {response.request.url.path} with a "
            f"body that is not JSON: {exc}",
            status=response.status_code,
            body=response.content[:500].decode("utf-8", "replace"),
        ) from exc


class ReboundClient:
    """One ReBound account (client id/secret, optional flow key); not thread-safe.

    Retries (tenacity): up to ``max_attempts`` attempts per request. Between attempts it waits an exponential
    back-off with jitter (0.1 s doubling, at most ``backoff_max_s``), or ReBound's ``Retry-After``
    when that is longer. A ``Retry-After`` above ``retry_after_max_s`` is not waited for at all: the
    request fails at once with ReboundUnavailableError (come back later, e.g. on the task's next
    try). The waits of one request never add up to more than ``retry_budget_s``: a wait that would
    cross it fails the request the same way. ``max_empty_pages``: consecutive empty pages with
    ``has_more: true`` tolerated before the feed counts as stalled. ``transport``: an httpx
    transport to use instead of the network (tests)."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        flow_key: str | None = None,
        timeout: float = 10.0,
        page_size: int = 500,
        max_attempts: int = 8,
        backoff_max_s: float = 5.0,
        retry_after_max_s: float = 120.0,
        retry_budget_s: float = 300.0,
        max_empty_pages: int = 10,
        transport: httpx.BaseTransport | None = None,
    ):
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be 1..1000")
        if retry_after_max_s < 0 or retry_budget_s < 0 or max_empty_pages < 0:
            raise ValueError("retry_after_max_s, retry_budget_s and max_empty_pages must not be negative")
        self._client_id = client_id
        self._client_secret = client_secret
        self._flow_key = flow_key
        self.page_size = page_size
        self.max_attempts = max(1, int(max_attempts))
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self.retry_budget_s = retry_budget_s
        self.max_empty_pages = max_empty_pages
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": "returnledger/0.1"},
        )
        self._token: str | None = None
        self._token_expires = 0.0
        #: how the client waits between attempts (tests replace it)
        self.sleep = time.sleep
        #: attempts, refreshes and waits, for logs and tests
        self.stats = {
            "requests": 0,
            "retries": 0,
            "token_fetches": 0,
            "token_refreshes_on_401": 0,
            "waited_s": 0.0,
            "pages_split": 0,
        }

    # --- plumbing ----------------------------------------------------------------

    def _wait(self, method: str, path: str):
        """tenacity's wait for one request: the back-off, or a longer ``Retry-After``; raises
        ReboundUnavailableError instead when ReBound asks for too long a pause or the budget would be
        crossed (tenacity passes it through: the request fails at once)."""
        backoff = wait_exponential_jitter(multiplier=0.1, max=self.backoff_max_s, jitter=0.1)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            transient = exc if isinstance(exc, _Transient) else None
            retry_after = transient.retry_after if transient else None
            status = transient.status if transient else None
            body = transient.body if transient else None
            if retry_after is not None and retry_after > self.retry_after_max_s:
                raise ReboundUnavailableError(
                    f"{method} {path}: ReBound asked to retry after {retry_after:g} s, longer than this "
                    f"client waits (retry_after_max_s={self.retry_after_max_s:g}); try again later",
                    status=status,
                    body=body,
                    retry_after=retry_after,
                ) from exc
            delay = max(backoff(state), retry_after or 0.0)
            waited = state.idle_for
            if waited + delay > self.retry_budget_s:
                raise ReboundUnavailableError(
                    f"{method} {path}: still failing after {state.attempt_number} attempts and {waited:g} s "
                    f"of waiting; the next wait ({delay:g} s) would exceed "
                    f"retry_budget_s={self.retry_budget_s:g}",
                    status=status,
                    body=body,
                    retry_after=retry_after,
                ) from exc
            return delay

        return wait

    def _count_retry(self, state: RetryCallState) -> None:
        self.stats["retries"] += 1
        self.stats["waited_s"] += state.next_action.sleep if state.next_action else 0.0

    def _out_of_attempts(self, state: RetryCallState) -> None:
        """After the last attempt: a 5xx/429 as it came (a ReboundUnavailableError), a network failure
        as ReboundUnavailableError."""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Transient):
            raise exc
        raise ReboundUnavailableError(
            f"ReBound unreachable after {self.max_attempts} attempts: {exc!r}"
        ) from exc

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.status_code in RETRY_STATUSES:
            raise _Transient(response.status_code, response.text, _retry_after(response))
        return response

    def _fetch_token(self) -> str:
        data = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
        }
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
            r = self._http.request(
                method, path, headers={"Authorization": f"Bearer {self._fetch_token()}"}, **kwargs
            )
        return self._check(r)

    def _request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs) -> httpx.Response:
        """The request with retries (see the class docstring); a non-retryable answer outside ``ok``
        raises ReboundError at once."""
        retrying = Retrying(
            retry=retry_if_exception_type(RETRYABLE),
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait(method, path),
            sleep=lambda seconds: self.sleep(seconds),  # read per wait: tests replace self.sleep
            before_sleep=self._count_retry,
            retry_error_callback=self._out_of_attempts,
        )
        r = retrying(self._send_once, method, path, **kwargs)
        if r.status_code not in ok:
            raise ReboundError(f"{method} {path} failed", status=r.status_code, body=r.text)
        return r

    # --- the API -----------------------------------------------------------------

    def iter_event_pages(
        self, cursor: str | None, until: datetime, *, raw: bool = False
    ) -> Iterator[EventPage]:
        """Pages of the feed from ``cursor`` (None = the beginning) up to deliveries before ``until``.

        Store each page's events and ``next_cursor`` together before asking for the
        next one: that is what makes a crashed run resume without gaps or repeats.
        ``raw=True`` leaves each event as the bytes received (``msgspec.Raw``), also when the
        page holds bytes a JSON decoder refuses (see ``decode_event_page``).

        A page that does not advance is refused before it is yielded, with FeedStalledError: one
        with events whose ``next_cursor`` is the cursor it was asked with, one with ``has_more``
        whose ``next_cursor`` was already asked for in this pass (a cycle), or more than
        ``max_empty_pages`` empty ``has_more`` pages in a row. An empty page that keeps the cursor
        with ``has_more: false`` is the normal "nothing new yet" answer."""
        params = {"until": _utc_z(until), "limit": self.page_size}
        cursor = cursor or None
        asked = {cursor}
        empty_run = 0
        while True:
            query = dict(params, cursor=cursor) if cursor else params
            response = self._request("GET", "/v1/events", params=query)
            page = decode_event_page(response.content, raw=raw)
            if page.split:
                self.stats["pages_split"] += 1
            nxt = page.next_cursor or None
            problem = None
            if page.events and nxt == cursor:
                problem = "it carries events but gives back the cursor it was asked with"
            elif page.has_more and nxt in asked:
                problem = (
                    "it says has_more but gives back the cursor it was asked with"
                    if nxt == cursor
                    else "it says has_more but names a cursor already read in this pass"
                )
            elif page.has_more and not page.events:
                empty_run += 1
                if empty_run > self.max_empty_pages:
                    problem = (
                        f"{empty_run} empty pages in a row say has_more "
                        f"(max_empty_pages={self.max_empty_pages})"
                    )
            else:
                empty_run = 0
            if problem:
                raise FeedStalledError(
                    f"ReBound feed is not advancing at cursor {cursor!r}: the page "
                    f"({len(page.events)} events, has_more={str(page.has_more).lower()}, "
                    f"next_cursor {page.next_cursor!r}) was refused because {problem}; "
                    "stopped instead of reading the same place again (the stored cursor is unchanged)",
                    cursor=cursor,
                    next_cursor=page.next_cursor,
                    has_more=page.has_more,
                    events=len(page.events),
                )
            yield page
            if not page.has_more:
                return
            cursor = nxt
            asked.add(cursor)

    def get_returns(self, return_ids: Iterable[str]) -> tuple[list[dict], list[str]]:
        """Return orders by id, in batches of 200; returns (found orders, missing ids)."""
        ids = list(dict.fromkeys(i for i in return_ids if i))
        found: list[dict] = []
        # ReBound ids never hold a comma (the list separator): such an id cannot exist there
        missing = [i for i in ids if "," in i]
        askable = [i for i in ids if "," not in i]
        for start in range(0, len(askable), BATCH_IDS):
            batch = askable[start : start + BATCH_IDS]
            payload = _decode(self._request("GET", "/v1/returns", params={"ids": ",".join(batch)}))
            returns = payload.get("returns") if isinstance(payload, dict) else None
            absent = payload.get("missing", []) if isinstance(payload, dict) else None
            if not isinstance(returns, list) or not isinstance(absent, list):
                # a 200 that is not the lookup's answer says nothing about these ids: not "none found"
                raise ReboundError(
                    "ReBound answered GET /v1/returns without its 'returns' and 'missing' lists",
                    status=200,
                    body=repr(payload)[:500],
                )
            found.extend(returns)
            missing.extend(absent)
        return found, missing

    def get_return(self, return_id: str) -> dict | None:
        r = self._request("GET", f"/v1/returns/{return_id}", ok=(200, 404))
        return r.json() if r.status_code == 200 else None

    def create_post_hoc_return(
        self,
        *,
        amazon_return_id: str,
        returns_notice: str,
        rma_id: str | None,
        sku: str,
        asin: str | None,
        quantity: int,
        returned_at: date | datetime | str,
        reason: str | None = None,
    ) -> dict:
        """Record a dark return in ReBound; safe to repeat (ReBound keys it by amazon_return_id)."""
        if isinstance(returned_at, datetime):
            returned_at = returned_at.date()
        body = {
            "amazon_return_id": amazon_return_id,
            "returns_notice": returns_notice,
            "rma_id": rma_id,
            "sku": sku,
            "asin": asin,
            "quantity": quantity,
            "returned_at": returned_at.isoformat() if isinstance(returned_at, date) else returned_at,
        }
        if reason is not None:
            body["reason"] = reason
        return self._request("POST", "/v1/returns", json=body, ok=(200, 201)).json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ReboundClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
