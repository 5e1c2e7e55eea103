"""Amazon Vendor Central client: python-amazon-sp-api with rate limits and safe retries.

The same code talks to Amazon and to the sandbox's simulated SP-API; only the
endpoint and the Login-with-Amazon (LWA) URL differ (how they reach sp_api is in
returnledger.clients.amazon_auth).

Retries and idempotency: throttling (429), Amazon's 5xx, timeouts and connection
errors are retried with exponential back-off behind a client-side token bucket per
operation, which keeps ``jitter_s`` worth of tokens in hand so that jitter on the
way does not turn a request sent at the rate into a 429. The buckets start at the
configured plan (Amazon's documented default) and then follow the plan Amazon states
in every answer's ``x-amzn-RateLimit-Limit`` header, higher or lower, less
``rate_margin`` (a lower plan scales the burst down with it); a 429 still drains the
bucket and backs off. What retrying cannot fix
raises at once, with Amazon's ``errors``: ``AmazonRequestError`` when Amazon refused
the request itself (400 and other 4xx), ``AmazonAuthError`` for refused credentials.
When retries run out the call raises ``AmazonUnavailableError``; the work should
stay pending and go again on a later run. A retry resends exactly the body it was
given, so callers give every credit note a deterministic ``id``. Amazon does not
document what it answers to an ``id`` it already holds: the same note again, or a
new transaction that fails with ``DuplicateInvoiceNumber``. The sync handles both (a
duplicate refusal counts only when it names a transaction of that note:
returnledger.amazon.confirm), and every HTTP attempt can be written down before it
leaves (``before_attempt``) and after it ends (``on_attempt``). Inventory
updates carry absolute quantities, so a resend sets the same stock. This module is
payload-agnostic: building credit notes is the sync pipeline's job.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from dataclasses import dataclass, field

from returnledger.clients.amazon_auth import Marketplace, sp_api_client, token_client_class
from returnledger.clients.ratelimit import UsagePlans

log = logging.getLogger(__name__)

LWA_URL = "https://api.amazon.com/auth/o2/token"
UK_MARKETPLACE_ID = "A1F83G8C2ARO7P"
OPERATIONS = ("submitInvoices", "getTransaction", "submitInventoryUpdate", "getTransactionStatus")


class AmazonError(Exception):
    """Base of the client's errors; ``errors`` is Amazon's error list, ``status`` the HTTP status."""

    def __init__(self, operation: str, errors: list[dict], status: int | None = None):
        self.operation, self.errors, self.status = operation, list(errors or []), status
        first = self.errors[0] if self.errors else {}
        super().__init__(
            f"{operation}: {status or ''} {first.get('code', '')} {first.get('message', '')}".strip()
        )


class AmazonRequestError(AmazonError):
    """Amazon refused this request itself (400 and other 4xx): resending it unchanged cannot help."""


class AmazonAuthError(AmazonError):
    """Login with Amazon refused our credentials, or the API kept refusing a fresh token (403).

    A configuration problem, not a verdict on the payload: keep the work pending.
    """


class AmazonUnavailableError(AmazonError):
    """Retries ran out on throttling, 5xx or transport errors: keep the work pending and retry later."""


@dataclass(frozen=True)
class TransactionStatus:
    """Outcome of an asynchronous submission: Processing, Success or Failure (with Amazon's errors)."""

    status: str
    errors: list[dict] = field(default_factory=list)
    transaction_id: str = ""

    @property
    def final(self) -> bool:
        return self.status in ("Success", "Failure")


class _Retry(Exception):
    """An attempt that may succeed when repeated (429, 5xx, transport trouble)."""

    def __init__(self, reason: str, throttled: bool = False):
        super().__init__(reason)
        self.throttled = throttled


class AmazonVendorClient:
    """Vendor Central operations the ledger needs, over python-amazon-sp-api.

    Safe to share between threads: each thread gets its own sp_api clients
    (they keep per-request state), the token buckets are shared.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        lwa_url: str,
        refresh_token: str,
        lwa_client_id: str,
        lwa_client_secret: str,
        marketplace_id: str = UK_MARKETPLACE_ID,
        region: str = "eu",
        rate_per_s: float = 10.0,
        burst: int = 10,
        jitter_s: float = 0.1,
        rate_margin: float = 0.03,
        learn_rate_limit: bool = True,
        max_attempts: int = 8,
        backoff_max_s: float = 10.0,
        timeout: float = 30.0,
    ):
        self.marketplace = Marketplace(endpoint.rstrip("/"), marketplace_id, region)
        self.credentials = {
            "refresh_token": refresh_token,
            "lwa_app_id": lwa_client_id,
            "lwa_client_secret": lwa_client_secret,
        }
        self.token_client_class = token_client_class(lwa_url)
        self.max_attempts = max(1, int(max_attempts))
        self.backoff_max_s = backoff_max_s
        self.backoff_base_s = min(1.0, 1.0 / max(rate_per_s, 0.001))
        self.timeout = timeout
        # Amazon's bucket refills at the same rate as ours: keep jitter_s worth of tokens in hand, so that
        # requests arriving closer together than we sent them are not throttled (see TokenBucket.reserve)
        self.plans = UsagePlans(
            OPERATIONS, rate_per_s, burst, jitter_s=jitter_s, margin=rate_margin, learn=learn_rate_limit
        )
        self.buckets = self.plans.buckets
        self.attempts = {op: 0 for op in OPERATIONS}  # requests sent, for run statistics
        self._local = threading.local()
        self._jitter = random.Random()

    # --- sp_api plumbing -------------------------------------------------------------
    def _api(self, name: str):
        """This thread's sp_api client of the named API (they keep per-request state)."""
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if name not in clients:
            clients[name] = sp_api_client(
                name,
                self.marketplace,
                self.credentials,
                timeout=self.timeout,
                token_client_class=self.token_client_class,
            )
        return clients[name]

    def close(self) -> None:
        for client in (getattr(self._local, "clients", None) or {}).values():
            client.close()
        self._local.clients = {}

    def _backoff(self, attempt: int, throttled: bool, op: str) -> float:
        wait = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        if throttled:
            wait = max(wait, 1.0 / self.buckets[op].rate)
        return wait * (0.5 + self._jitter.random() / 2)

    def _call(self, op: str, api: str, fn, on_attempt=None, before_attempt=None, parse=None):
        """Run ``fn(client)`` under the bucket with retries; Amazon refusals become AmazonRequestError.

        ``fn`` returns sp_api's ApiResponse, whose headers state the usage plan (``learn``); ``parse(op,
        response)`` turns it into the result.

        ``before_attempt(attempt)`` is called before every HTTP attempt and may stop the call by raising
        (nothing is sent then); ``on_attempt(attempt, http_status, result, errors)`` is told of every HTTP
        attempt as it ends (status None: no answer), so a caller can keep a send log of each try, written
        down before it leaves and after it ends.
        """
        import httpx
        from sp_api.auth.exceptions import AuthorizationError
        from sp_api.base import exceptions as spx
        from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt

        retryable_sp = (
            spx.SellingApiRequestThrottledException,
            spx.SellingApiServerException,
            spx.SellingApiTemporarilyUnavailableException,
            spx.SellingApiGatewayTimeoutException,
        )
        refreshed = False
        tries = 0

        def attempt():
            nonlocal tries
            tries += 1
            if before_attempt is not None:
                before_attempt(tries)
            try:
                result = _attempt()
            except BaseException as e:
                if on_attempt is not None:
                    cause = e.__cause__ if isinstance(e, (_Retry, AmazonError)) else e
                    status = getattr(cause, "code", None)
                    errors = (
                        getattr(cause, "error", None)
                        or getattr(e, "errors", None)
                        or [{"code": type(cause).__name__, "message": str(cause)[:500]}]
                    )
                    on_attempt(tries, status if isinstance(status, int) else None, None, errors)
                raise
            if on_attempt is not None:
                on_attempt(tries, 202 if op.startswith("submit") else 200, result, None)
            return result

        def _answer(client):
            try:
                response = fn(client)
            except spx.SellingApiException as e:  # a refusal states the plan too (429s above all)
                self.plans.learn(op, getattr(e, "headers", None))
                raise
            self.plans.learn(op, getattr(response, "headers", None))
            return parse(op, response) if parse is not None else response

        def _attempt():
            nonlocal refreshed
            # built before the token is taken: a first sp_api client takes ~0.1 s to build, and a request
            # sent that much later than its token was taken meets Amazon's bucket that much emptier
            client = self._api(api)
            self.buckets[op].acquire()
            self.attempts[op] += 1
            try:
                return _answer(client)
            except spx.SellingApiRequestThrottledException as e:
                self.buckets[op].drain()
                raise _Retry(f"throttled: {getattr(e, 'message', '')}", throttled=True) from e
            except retryable_sp as e:
                raise _Retry(f"{e.code}: {getattr(e, 'message', '')}") from e
            except spx.SellingApiForbiddenException as e:
                if refreshed:
                    raise AmazonAuthError(op, e.error, 403) from e
                refreshed = True  # a cached token the API no longer knows: fetch a new one, once
                client._auth.forget_token()
                raise _Retry("access token refused") from e
            except spx.SellingApiException as e:
                if type(e) is spx.SellingApiException:  # a status the library does not map (502, ...)
                    raise _Retry(f"unmapped error: {getattr(e, 'message', '')}") from e
                raise AmazonRequestError(op, e.error, e.code) from e
            except AuthorizationError as e:
                if (e.status_code or 0) >= 500:
                    raise _Retry(f"LWA {e.status_code}") from e
                raise AmazonAuthError(
                    op,
                    [
                        {
                            "code": e.error_code or "AuthorizationError",
                            "message": e.message or "",
                            "details": "LWA token request",
                        }
                    ],
                    e.status_code,
                ) from e
            except (httpx.TimeoutException, httpx.TransportError, json.JSONDecodeError) as e:
                # JSONDecodeError: an LWA answer that is not JSON (a proxy's 5xx page, say)
                raise _Retry(f"{type(e).__name__}: {e}") from e

        def wait(state) -> float:
            exc = state.outcome.exception()
            return self._backoff(state.attempt_number, getattr(exc, "throttled", False), op)

        def before_sleep(state) -> None:
            log.info(
                "Amazon %s attempt %d failed (%s); retrying",
                op,
                state.attempt_number,
                state.outcome.exception(),
            )

        try:
            for try_ in Retrying(
                stop=stop_after_attempt(self.max_attempts),
                wait=wait,
                retry=retry_if_exception_type(_Retry),
                before_sleep=before_sleep,
                reraise=False,
            ):
                with try_:
                    return attempt()
        except RetryError as e:
            last = e.last_attempt.exception()
            cause = last.__cause__ if last is not None else None
            errors = getattr(cause, "error", None) or [
                {"code": "RetriesExhausted", "message": str(last), "details": ""}
            ]
            status = getattr(cause, "code", None)
            status = status if isinstance(status, int) else None
            kind = AmazonAuthError if status == 403 else AmazonUnavailableError
            raise kind(op, errors, status) from cause

    @staticmethod
    def _transaction_id(op: str, response) -> str:
        tid = (response.payload or {}).get("transactionId")
        if not tid:  # a 2xx/5xx without Amazon's JSON: the library returns an empty response
            raise _Retry(f"{op}: answer without transactionId")
        return tid

    @staticmethod
    def _status(op: str, response) -> TransactionStatus:
        state = (response.payload or {}).get("transactionStatus")
        if not state or "status" not in state:
            raise _Retry(f"{op}: answer without transactionStatus")
        errors = state.get("errors") or []
        if isinstance(errors, dict):  # DF 2021-12-28 wraps the list: {"errors": [...]}
            errors = errors.get("errors") or []
        return TransactionStatus(
            status=state["status"], errors=list(errors), transaction_id=state.get("transactionId", "")
        )

    # --- operations ------------------------------------------------------------------
    def submit_invoices(self, invoices: list[dict], *, on_attempt=None, before_attempt=None) -> str:
        """POST invoices/credit notes (body ``{"invoices": invoices}``); returns the transactionId.

        Retries resend the identical body: give each credit note a deterministic id, and read the
        transaction's status (a resend may be answered as a duplicate of the note Amazon already holds).
        """
        body = {"invoices": invoices}
        return self._call(
            "submitInvoices",
            "invoices",
            lambda c: c.submit_invoices(body),
            parse=self._transaction_id,
            on_attempt=on_attempt,
            before_attempt=before_attempt,
        )

    def get_transaction(self, transaction_id: str) -> TransactionStatus:
        return self._call(
            "getTransaction",
            "transactions",
            lambda c: c.get_transaction(transaction_id),
            parse=self._status,
        )

    def submit_inventory_update(
        self,
        warehouse_id: str,
        *,
        selling_party_id: str,
        items: list[dict],
        is_full_update: bool = False,
        on_attempt=None,
        before_attempt=None,
    ) -> str:
        """POST absolute available quantities for the warehouse's SKUs; returns the transactionId."""
        inventory = {
            "sellingParty": {"partyId": selling_party_id},
            "isFullUpdate": is_full_update,
            "items": items,
        }
        return self._call(
            "submitInventoryUpdate",
            "df_inventory",
            lambda c: c.submit_inventory_update(warehouse_id, inventory=inventory),
            parse=self._transaction_id,
            on_attempt=on_attempt,
            before_attempt=before_attempt,
        )

    def get_df_transaction(self, transaction_id: str) -> TransactionStatus:
        return self._call(
            "getTransactionStatus",
            "df_transactions",
            lambda c: c.get_transaction_status(transaction_id),
            parse=self._status,
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
