"""SIMULATED ReBound API: the sandbox stand-in for ReBound's headless API.

ReBound's real OAuth2 client-credentials login is public; its event feed,
return-order JSON, post-hoc return creation and webhooks are not, so this
module *defines* them (docs/sandbox.md, "Simulated ReBound API"). The
production client (returnledger.clients.rebound) talks to this app exactly as
it would to ReBound; only the base URL and credentials differ.

Everything is served from one loaded scenario. The feed order is fixed at
start-up (delivery time, then file order; a duplicate right after its first
copy; a redelivery listed again at its own later time), so a cursor is just a
position and stays valid across restarts. Tests can add deliveries of raw
bytes (``raw_deliveries``), e.g. bytes that are not UTF-8, which no JSON
scenario file can hold.
Faults (5xx, slow answers) come from ``scenario.faults.rebound`` and are drawn
from ``random.Random(seed)`` so a run is reproducible. Control endpoints live
under ``/_sandbox`` only; the production client never calls them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import random
import secrets
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from returnledger_dev.sandbox.feed import feed_deliveries
from returnledger_dev.sandbox.scenario import Scenario, paused_gc
from returnledger_dev.sandbox.webhooks import WebhookSender

CREATED_RETURNS_FILE = "rebound_created_returns.jsonl"
POST_HOC_PREFIX = "RB-POSTHOC-"
MAX_IDS = 200
MAX_LIMIT = 1000
_CURSOR_TAG = "rbfeed1:"


def _encoder():
    try:
        import msgspec

        return msgspec.json.encode
    except ImportError:  # pragma: no cover - msgspec is pinned
        return lambda obj: json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


_fast_encode = _encoder()


def _encode(obj: Any) -> bytes:
    """Compact JSON bytes. A string holding a lone surrogate (an invalid event of the scenario may,
    written as ``"\\ud800"``) cannot be UTF-8: such an object is written with the escape instead,
    which is how the scenario file carries it."""
    try:
        return _fast_encode(obj)
    except (UnicodeEncodeError, ValueError):
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _json(obj: Any, status: int = 200) -> Response:
    return Response(content=_encode(obj), status_code=status, media_type="application/json")


def encode_cursor(position: int) -> str:
    """Opaque to clients; here a position in the fixed feed order."""
    return base64.urlsafe_b64encode(f"{_CURSOR_TAG}{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError("cursor is not one this feed issued") from exc
    if not text.startswith(_CURSOR_TAG) or not text[len(_CURSOR_TAG) :].isdigit():
        raise ValueError("cursor is not one this feed issued")
    return int(text[len(_CURSOR_TAG) :])


def _parse_instant(value: str) -> datetime:
    t = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    if t.tzinfo is None:
        raise ValueError("needs a time zone, e.g. 2026-10-02T00:00:00Z")
    return t


class PostHocReturnIn(BaseModel):
    """Body of POST /v1/returns: a return record made after the fact for a dark return."""

    model_config = ConfigDict(extra="forbid")
    amazon_return_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    returns_notice: Annotated[str, Field(min_length=1)]
    rma_id: str | None = None
    sku: Annotated[str, Field(min_length=1)]
    asin: str | None = None
    quantity: Annotated[int, Field(gt=0)]
    returned_at: date
    reason: str | None = None


class _Feed:
    """The fixed delivery order, pre-encoded once so pages are byte joins."""

    def __init__(self, scenario: Scenario, raw_deliveries: Iterable[tuple[datetime, bytes]] = ()):
        with paused_gc():
            self._build(scenario)
            extra = list(raw_deliveries)
            if extra:
                self._merge(extra)

    def _merge(self, extra: list[tuple[datetime, bytes]]) -> None:
        """Add deliveries given as raw bytes, served verbatim (after scenario deliveries of the same time)."""
        items = [(t, 0, i, b, e) for i, (t, b, e) in enumerate(zip(self.times, self.bodies, self.event_ids))]
        for j, (when, body) in enumerate(extra):
            if when.tzinfo is None:
                raise ValueError("raw_deliveries: delivery times must be timezone-aware")
            items.append((when.timestamp(), 1, j, bytes(body), None))
        items.sort(key=lambda x: x[:3])
        self.times = [x[0] for x in items]
        self.bodies = [x[3] for x in items]
        self.event_ids = [x[4] for x in items]

    def _build(self, scenario: Scenario) -> None:
        encoded: dict[int, bytes] = {}
        self.bodies: list[bytes] = []
        self.times: list[float] = []
        self.event_ids: list[str | None] = []
        for when, obj in feed_deliveries(scenario):
            body = encoded.get(id(obj))
            if body is None:
                body = encoded[id(obj)] = _encode(obj)
            self.bodies.append(body)
            self.times.append(when.timestamp())
            eid = obj.get("event_id")
            self.event_ids.append(eid if isinstance(eid, str) else None)

    def __len__(self) -> int:
        return len(self.bodies)

    def visible_end(self, until: datetime) -> int:
        """Position after the last delivery strictly before ``until``."""
        return bisect_left(self.times, until.timestamp())


def build_rebound_app(
    scenario: Scenario,
    *,
    out_dir: Path | None,
    client_id: str = "sandbox-client",
    client_secret: str = "sandbox-secret",
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    seed: int = 0,
    token_ttl_s: float = 3600,
    timeout_delay_s: float = 3.0,
    faults: bool = True,
    webhook_max_attempts: int = 5,
    webhook_backoff_s: float = 0.5,
    raw_deliveries: Iterable[tuple[datetime, bytes]] = (),
) -> FastAPI:
    """The simulated ReBound API for one scenario (see the module docstring and docs/sandbox.md).

    ``raw_deliveries``: extra ``(delivery time, bytes)`` served verbatim in the feed (tests of
    hostile input; the bytes need not be JSON or UTF-8)."""
    feed = _Feed(scenario, raw_deliveries)
    returns: dict[str, dict] = {r["return_id"]: r for r in scenario.raw["rebound"]["returns"]}
    created: dict[str, dict] = {}  # amazon_return_id -> post-hoc record
    tokens: dict[str, float] = {}  # token -> monotonic expiry
    rng = random.Random(seed)
    fault_cfg = {
        "error_rate": scenario.faults.rebound.error_rate if faults else 0.0,
        "timeout_rate": scenario.faults.rebound.timeout_rate if faults else 0.0,
    }
    # SIMULATED fault of the return-order lookup alone (GET /v1/returns?ids=...), set through
    # POST /_sandbox/faults: None (serve it), "outage" (503 on every call) or "no_returns_key" (a 200
    # whose body lacks the ``returns`` list); the feed and the other endpoints keep working
    lookup_fault: dict[str, str | None] = {"returns_lookup": None}
    stats: Counter = Counter(
        dict.fromkeys(
            (
                "requests",
                "fault_500",
                "fault_503",
                "fault_timeout",
                "unauthorized",
                "tokens_issued",
                "token_rejected",
                "tokens_expired",
                "events_served",
                "returns_created",
                "returns_create_repeats",
                "webhooks_delivered",
                "webhook_attempts",
                "fault_returns_lookup",
            ),
            0,
        )
    )
    acked: set[int] = set()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    app = FastAPI(
        title="ReBound API (SIMULATED sandbox)",
        description="Simulated stand-in for ReBound's headless API. The event feed, return "
        "orders, post-hoc returns and webhooks are this project's own contract; "
        "see docs/sandbox.md. Not affiliated with ReBound.",
        version="sandbox-1",
    )
    app.state.stats = stats

    async def gate(request: Request) -> Response | None:
        """Fault injection, then bearer-token check, for every /v1 request."""
        stats["requests"] += 1
        draw = rng.random()
        if draw < fault_cfg["error_rate"]:
            status = 500 if rng.random() < 0.5 else 503
            stats[f"fault_{status}"] += 1
            return _json({"error": "server_error", "message": "simulated fault"}, status)
        if draw < fault_cfg["error_rate"] + fault_cfg["timeout_rate"]:
            stats["fault_timeout"] += 1
            await asyncio.sleep(timeout_delay_s)
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        expiry = tokens.get(token) if scheme.lower() == "bearer" else None
        if expiry is None or expiry <= time.monotonic():
            stats["unauthorized"] += 1
            return Response(
                content=b'{"error":"invalid_token"}',
                status_code=401,
                media_type="application/json",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return None

    @app.post("/oauth/token", tags=["auth"])
    async def oauth_token(request: Request) -> Response:
        """OAuth2 client credentials (form body, or HTTP Basic for the client)."""
        form = await request.form()
        cid, secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic ") and not cid:
            try:
                cid, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                cid = secret = None
        if form.get("grant_type") != "client_credentials":
            return _json({"error": "unsupported_grant_type"}, 400)
        if not (
            isinstance(cid, str)
            and isinstance(secret, str)
            and secrets.compare_digest(cid, client_id)
            and secrets.compare_digest(secret, client_secret)
        ):
            stats["token_rejected"] += 1
            return _json({"error": "invalid_client"}, 401)
        token = secrets.token_urlsafe(24)
        tokens[token] = time.monotonic() + token_ttl_s
        stats["tokens_issued"] += 1
        return _json(
            {"access_token": token, "token_type": "Bearer", "expires_in": max(1, math.ceil(token_ttl_s))}
        )

    @app.get("/v1/events", tags=["events"])
    async def events(
        request: Request, until: str | None = None, cursor: str | None = None, limit: int = 100
    ) -> Response:
        """Deliveries before ``until``, from ``cursor``, at most ``limit`` (1..1000)."""
        if (denied := await gate(request)) is not None:
            return denied
        if not until:
            return _json({"error": "invalid_request", "message": "until is required"}, 400)
        try:
            until_t = _parse_instant(until)
        except ValueError as exc:
            return _json({"error": "invalid_request", "message": f"until: {exc}"}, 400)
        if not 1 <= limit <= MAX_LIMIT:
            return _json({"error": "invalid_request", "message": f"limit must be 1..{MAX_LIMIT}"}, 400)
        try:
            start = decode_cursor(cursor)
        except ValueError as exc:
            return _json({"error": "invalid_cursor", "message": str(exc)}, 400)
        if start > len(feed):
            return _json({"error": "invalid_cursor", "message": "cursor is beyond the feed"}, 400)
        visible = feed.visible_end(until_t)
        stop = max(start, min(start + limit, visible))
        stats["events_served"] += stop - start
        body = (
            b'{"events":['
            + b",".join(feed.bodies[start:stop])
            + b'],"next_cursor":"'
            + encode_cursor(stop).encode()
            + b'","has_more":'
            + (b"true" if stop < visible else b"false")
            + b"}"
        )
        return Response(content=body, media_type="application/json")

    def _order(return_id: str) -> dict | None:
        if return_id in returns:
            return returns[return_id]
        if return_id.startswith(POST_HOC_PREFIX):
            return created.get(return_id[len(POST_HOC_PREFIX) :])
        return None

    @app.get("/v1/returns/{return_id}", tags=["returns"])
    async def get_return(request: Request, return_id: str) -> Response:
        if (denied := await gate(request)) is not None:
            return denied
        order = _order(return_id)
        return _json(order) if order is not None else _json({"error": "not_found"}, 404)

    @app.get("/v1/returns", tags=["returns"])
    async def list_returns(request: Request, ids: str = "") -> Response:
        """Batch lookup: ``ids=a,b,c`` (up to 200)."""
        if (denied := await gate(request)) is not None:
            return denied
        if lookup_fault["returns_lookup"] == "outage":
            stats["fault_returns_lookup"] += 1
            return _json({"error": "service_unavailable", "message": "simulated return-order outage"}, 503)
        wanted = [i for i in ids.split(",") if i]
        if not wanted or len(wanted) > MAX_IDS:
            return _json({"error": "invalid_request", "message": f"ids: give 1..{MAX_IDS} return ids"}, 400)
        found, missing = [], []
        for rid in wanted:
            order = _order(rid)
            (found.append(order) if order is not None else missing.append(rid))
        if lookup_fault["returns_lookup"] == "no_returns_key":
            stats["fault_returns_lookup"] += 1
            return _json({"missing": missing})
        return _json({"returns": found, "missing": missing})

    @app.post("/v1/returns", tags=["returns"])
    async def create_return(request: Request) -> Response:
        """Post-hoc return record for a dark return; idempotent by amazon_return_id."""
        if (denied := await gate(request)) is not None:
            return denied
        try:
            body = PostHocReturnIn.model_validate_json(await request.body())
        except ValidationError as exc:
            return _json(
                {
                    "error": "invalid_request",
                    "message": "; ".join(
                        f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
                    ),
                },
                422,
            )
        existing = created.get(body.amazon_return_id)
        if existing is not None:
            stats["returns_create_repeats"] += 1
            return _json(existing, 200)
        record = {
            "return_id": f"{POST_HOC_PREFIX}{body.amazon_return_id}",
            "order_reference": None,
            "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "source": "post_hoc",
            "amazon_return_id": body.amazon_return_id,
            "returned_at": body.returned_at.isoformat(),
            "amazon_refs": {"returns_notice": body.returns_notice, "rma_id": body.rma_id, "vret": None},
            "lines": [
                {
                    "line": 1,
                    "sku": body.sku,
                    "asin": body.asin,
                    "quantity": body.quantity,
                    "reason": body.reason,
                }
            ],
        }
        created[body.amazon_return_id] = record
        stats["returns_created"] += 1
        if out is not None:
            with (out / CREATED_RETURNS_FILE).open("ab") as f:
                f.write(_encode(record) + b"\n")
        return _json(record, 201)

    # --- control endpoints (sandbox only) -------------------------------------------

    @app.get("/_sandbox/health", tags=["sandbox control"])
    async def health() -> Response:
        return _json(
            {"status": "ok", "simulated": "rebound", "scenario": scenario.name, "feed_length": len(feed)}
        )

    @app.post("/_sandbox/expire-tokens", tags=["sandbox control"])
    async def expire_tokens() -> Response:
        n = len(tokens)
        tokens.clear()
        stats["tokens_expired"] += n
        return _json({"expired": n})

    @app.get("/_sandbox/stats", tags=["sandbox control"])
    async def get_stats() -> Response:
        return _json(
            {
                **dict(stats),
                "feed_length": len(feed),
                "faults": fault_cfg,
                **lookup_fault,
                "webhooks_acknowledged": len(acked),
            }
        )

    @app.post("/_sandbox/faults", tags=["sandbox control"])
    async def set_faults(request: Request) -> Response:
        """Change fault rates at run time: JSON ``{error_rate?, timeout_rate?, returns_lookup?}``
        (``returns_lookup``: null, "outage" or "no_returns_key", see ``lookup_fault``)."""
        body = await request.json()
        if "returns_lookup" in body:
            if body["returns_lookup"] not in (None, "outage", "no_returns_key"):
                return _json(
                    {"error": "invalid_request", "message": "returns_lookup: null, outage or no_returns_key"},
                    400,
                )
            lookup_fault["returns_lookup"] = body["returns_lookup"]
        for key in ("error_rate", "timeout_rate"):
            if key in body:
                value = float(body[key])
                if not 0 <= value <= 1:
                    return _json({"error": "invalid_request", "message": f"{key} must be 0..1"}, 400)
                fault_cfg[key] = value
        return _json(fault_cfg)

    @app.post("/_sandbox/webhooks/deliver", tags=["sandbox control"])
    async def deliver_webhooks(until: str) -> Response:
        """Push every delivery before ``until`` not yet acknowledged (2xx) to the webhook URL."""
        if not webhook_url or not webhook_secret:
            return _json(
                {"error": "not_configured", "message": "start the simulator with a webhook_url"}, 409
            )
        try:
            end = feed.visible_end(_parse_instant(until))
        except ValueError as exc:
            return _json({"error": "invalid_request", "message": f"until: {exc}"}, 400)
        pending = [(pos, feed.bodies[pos], feed.event_ids[pos]) for pos in range(end) if pos not in acked]
        sender = WebhookSender(
            webhook_url, webhook_secret, max_attempts=webhook_max_attempts, backoff_s=webhook_backoff_s
        )
        from starlette.concurrency import run_in_threadpool

        results = await run_in_threadpool(sender.deliver, pending)
        ok = [d.key for d in results if d.delivered]
        acked.update(ok)  # type: ignore[arg-type]
        stats["webhooks_delivered"] += len(ok)
        stats["webhook_attempts"] += sender.attempts_made
        return _json(
            {
                "delivered": len(ok),
                "failed": len(results) - len(ok),
                "attempts": sender.attempts_made,
                "pending_before": len(pending),
            }
        )

    return app
