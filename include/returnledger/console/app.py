"""The returns exceptions console: the owner teams' page in the Airflow UI.

Operations, warehouse, integration and finance work their exception queue
here: filter by owner team, type, status and age; open one to see the
return line's history and the raw ReBound payloads; resolve, dismiss, retry
an Amazon submission, add the missing reason-code mapping or SKU.

Airflow 3 does not protect plugin apps, so every route, known or not, authenticates
the caller with Airflow's own FastAPI dependency
(``airflow.api_fastapi.core_api.security.get_user``, the one behind ``GetUserDep``:
an ``Authorization: Bearer`` JWT, else the UI's ``_token`` cookie, validated and
checked for revocation by the configured auth manager) and records the Airflow user
as the actor of every action.

Who may do what (docs/operating-guide.md, "Who may act in the console"):

* read (GET): the auth manager's custom-view permission on "Returns exceptions"
  (``is_authorized_custom_view(method="GET")``); under the SimpleAuthManager any role.
* act (every POST: resolve, dismiss, retry an Amazon submission, add a reason-code
  mapping, add or overwrite a SKU's ASIN and unit cost): the edit permission,
  ``is_authorized_custom_view(method="PUT", resource_name="Returns exceptions")``,
  which FAB grants as "can edit on Returns exceptions". The SimpleAuthManager
  answers that question without looking at the method, so under it the user's
  role must also be Op or Admin; Viewer and User may only read.

A user who may only read sees no action forms, and gets 403 with a message naming
what is needed if they post anyway (the middleware refuses first; every POST route
also carries the ``require_may_act`` guard). Forms posted with the cookie carry a
per-session CSRF token and must come from the same origin.

The app is plain server-rendered HTML (jinja2, autoescaped); the lifecycle
rules live in returnledger.exception_queue.queue.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit

import jinja2
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from returnledger.models import ExceptionStatus, ExceptionType

log = logging.getLogger(__name__)

RESOURCE_NAME = "Returns exceptions"      # the custom view name the auth manager is asked about
COOKIE_NAME = "_token"                    # airflow.api_fastapi.auth.managers.base_auth_manager.COOKIE_NAME_JWT_TOKEN
CSRF_FIELD = "csrf_token"

#: Amazon customer-return reason codes offered when adding a mapping (docs: domain.md)
AMAZON_REASON_CODES = (
    "CR-DEFECTIVE", "CR-DAMAGED_BY_CARRIER", "CR-DAMAGED_BY_FC", "CR-NOT_AS_DESCRIBED", "CR-SWITCHEROO",
    "CR-MISSING_PARTS", "CR-QUALITY_UNACCEPTABLE", "CR-UNWANTED_ITEM", "CR-ORDERED_WRONG_ITEM",
    "CR-FOUND_BETTER_PRICE", "CR-NO_REASON_GIVEN", "CR-NOT_COMPATIBLE", "CR-EXTRA_ITEM",
    "CR-APPAREL_TOO_SMALL", "CR-APPAREL_TOO_LARGE", "CR-APPAREL_STYLE", "CR-MISORDERED", "CR-NEVER_ARRIVED",
    "CR-WARRANTY", "CR-UNAUTHORIZED_PURCHASE", "CR-OTHER",
)
#: exception types whose fix is to send the Amazon action again
RETRYABLE_TYPES = frozenset({ExceptionType.AMAZON_REJECTED})
#: headings of the exception detail's parts (returnledger.exception_queue.queue.exception_detail)
SECTION_TITLES = {"return_order": "Return order (returns notice)", "line": "Return line",
                  "history": "Line history", "raw_events": "Raw ReBound payloads",
                  "held_events": "Held events", "submissions": "Amazon submissions",
                  "amazon_return": "Amazon return record", "audit": "Audit trail"}


# --- authentication and authorization ------------------------------------------------------------

class NotAuthenticated(Exception):
    """No usable credential: answer 401."""


class Forbidden(Exception):
    """A credential that is invalid, revoked, or not allowed to do this: answer 403."""


#: what the console asks ``is_authorized_custom_view`` for before a state-changing action. FAB maps
#: PUT to its ``can_edit`` action, so under FAB the permission is "can edit on Returns exceptions".
EDIT_METHOD = "PUT"
#: the lowest SimpleAuthManager role that may act (its roles are ordered VIEWER < USER < OP < ADMIN)
SIMPLE_ROLE_TO_ACT = "OP"


def _simple_auth_manager_cls():
    try:
        from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    except ImportError:  # pragma: no cover - every Airflow 3 ships it
        return None
    return SimpleAuthManager


class AirflowAuth:
    """Who is calling, and what they may do, answered by the api-server's auth manager.

    *Who*: Airflow's own FastAPI dependency ``airflow.api_fastapi.core_api.security.get_user`` (the
    function behind ``GetUserDep``) picks the credential (an ``Authorization: Bearer`` header wins,
    else the UI's ``_token`` cookie) and has the configured auth manager check it (signature, expiry,
    audience, revocation), so whatever auth manager the deployment uses (simple, FAB, Keycloak) also
    guards this console.

    *What*: reading needs ``is_authorized_custom_view(method="GET", resource_name="Returns
    exceptions")``. Acting (every POST) needs ``is_authorized_custom_view(method="PUT", ...)``, which
    FAB, Keycloak and other full auth managers honour; the SimpleAuthManager ignores the method (any
    role, even Viewer, would pass), so under it the user's role must also be Op or Admin.
    """

    def _manager(self):
        from airflow.api_fastapi.app import get_auth_manager

        return get_auth_manager()

    async def authenticate(self, request: Request) -> tuple[Any, str, bool]:
        """The signed-in user, the credential used, and whether it came from the session cookie."""
        from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

        credentials = await bearer_scheme(request)
        try:
            user = await get_user(request, _oauth_token=None, bearer_credentials=credentials)
        except HTTPException as exc:
            if exc.status_code == 401:
                raise NotAuthenticated(str(exc.detail)) from None
            raise Forbidden(str(exc.detail)) from None
        if credentials is not None:   # get_user's own precedence: the explicit credential wins
            return user, credentials.credentials, False
        return user, request.cookies.get(COOKIE_NAME) or "", True

    def _is_simple(self, manager) -> bool:
        cls = _simple_auth_manager_cls()
        return cls is not None and isinstance(manager, cls)

    def may_read(self, user: Any) -> bool:
        return bool(self._manager().is_authorized_custom_view(method="GET", resource_name=RESOURCE_NAME,
                                                              user=user))

    def may_act(self, user: Any) -> bool:
        """Resolve, dismiss, retry, add a mapping or a SKU: Op/Admin (simple), edit permission (others)."""
        manager = self._manager()
        if not manager.is_authorized_custom_view(method=EDIT_METHOD, resource_name=RESOURCE_NAME, user=user):
            return False
        if self._is_simple(manager):
            from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManagerRole

            role = (getattr(user, "role", None) or "").upper()
            if role not in SimpleAuthManagerRole.__members__:
                return False
            return SimpleAuthManagerRole[role].order >= SimpleAuthManagerRole[SIMPLE_ROLE_TO_ACT].order
        return True

    def act_requirement(self) -> str:
        """What acting needs, in words, for the page and the 403 message."""
        try:
            simple = self._is_simple(self._manager())
        except Exception:  # no auth manager initialised (outside the api-server)
            simple = False
        if simple:
            return "the Op or Admin role"
        return f'permission to edit "{RESOURCE_NAME}" (FAB: can edit on {RESOURCE_NAME})'

    def describe(self, user: Any) -> str:
        """The user as the 403 message names them: with their role where the auth manager has one."""
        role = getattr(user, "role", None)
        name = self.user_name(user)
        return f"{name} (role {role})" if isinstance(role, str) and role else name

    def login_url(self, next_url: str) -> str | None:
        try:
            return self._manager().get_url_login(next_url=next_url)
        except Exception:  # no auth manager initialised (outside the api-server)
            return None

    @staticmethod
    def user_name(user: Any) -> str:
        return user.get_name()


@dataclass(frozen=True)
class Caller:
    user: Any
    name: str
    token: str
    via_cookie: bool
    may_act: bool


async def _authenticate(request: Request, auth: AirflowAuth) -> Caller:
    """Airflow's get_user for who; the auth manager for may read (else 403) and may act."""
    user, token, via_cookie = await auth.authenticate(request)
    if user is None:
        raise Forbidden("Invalid JWT token")
    name = auth.user_name(user)
    if not auth.may_read(user):
        raise Forbidden(f"{name} may not read the returns exceptions")
    return Caller(user=user, name=name, token=token, via_cookie=via_cookie, may_act=auth.may_act(user))


def _may_not_act(auth: AirflowAuth, caller: Caller) -> str:
    return (f"{auth.describe(caller.user)} may read the returns exceptions but not act on them: resolving, "
            f"dismissing, retrying and adding a mapping or a SKU need {auth.act_requirement()}.")


def require_may_act(request: Request) -> None:
    """Route guard on every state-changing route (the middleware refuses first; this keeps it so
    for any route added later)."""
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is None or not caller.may_act:
        raise HTTPException(403, "Not allowed to act on the returns exceptions")


def csrf_token_for(session_token: str) -> str:
    """Bound to the session JWT: another site can neither read the cookie nor derive this."""
    return hmac.new(session_token.encode(), b"returnledger-console-csrf", hashlib.sha256).hexdigest()


def _check_same_origin(request: Request) -> None:
    """Refuse cross-site form posts (Origin, else Referer, must name this host)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        if origin == "null":
            raise Forbidden("Cross-origin form post refused")
        return  # non-browser client; the CSRF token still applies
    host = request.headers.get("host", "")
    if urlsplit(origin).netloc.lower() != host.lower():
        raise Forbidden("Cross-origin form post refused")


# --- rendering ----------------------------------------------------------------------------------

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}Returns exceptions{% endblock %}</title>
<style>
 body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.2rem;color:#1a1a1a;font-size:14px}
 h1{font-size:1.4rem;margin:.2rem 0 .8rem} h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
 table{border-collapse:collapse;width:100%;margin-bottom:.8rem} th,td{border:1px solid #ccd;padding:.3rem .5rem;
 text-align:left;vertical-align:top} th{background:#eef1f6} tr.overdue td{background:#fff2f0}
 form.inline{display:inline-block;margin:.2rem 1rem .6rem 0;padding:.6rem;border:1px solid #ccd;border-radius:4px}
 label{margin-right:.6rem} input,select,button{font-size:14px;padding:.2rem .4rem} button{cursor:pointer}
 .msg{padding:.5rem .8rem;background:#e9f7ec;border:1px solid #9c9;margin-bottom:.8rem}
 .err{padding:.5rem .8rem;background:#fdecea;border:1px solid #e99;margin-bottom:.8rem}
 .muted{color:#666} pre{background:#f6f8fa;padding:.5rem;overflow:auto;max-height:24rem;margin:0}
 .status-open{color:#b03000;font-weight:600} nav{margin-bottom:.6rem} table.kv th{width:13rem}
</style></head><body>
<nav><a href="{{ base }}/">Returns exceptions</a> <span class="muted">&middot; signed in as {{ user }}{% if read_only %}
 <span id="read-only-badge">(read only)</span>{% endif %}</span></nav>
{% if message %}<div class="msg" role="status">{{ message }}</div>{% endif %}
{% if error %}<div class="err" role="alert">{{ error }}</div>{% endif %}
{% block body %}{% endblock %}
</body></html>
"""

_LIST = """{% extends "base" %}
{% block body %}
<h1>Returns exceptions</h1>
<form method="get" action="{{ base }}/" id="filters">
 <label>Owner team <select name="owner">
  <option value="">all</option>
  {% for o in owners %}<option value="{{ o }}" {% if o == f.owner %}selected{% endif %}>{{ o }}</option>{% endfor %}
 </select></label>
 <label>Type <select name="type">
  <option value="">all</option>
  {% for t in types %}<option value="{{ t }}" {% if t == f.type %}selected{% endif %}>{{ t }}</option>{% endfor %}
 </select></label>
 <label>Status <select name="status">
  {% for s in statuses %}<option value="{{ s }}" {% if s == f.status %}selected{% endif %}>{{ s }}</option>{% endfor %}
 </select></label>
 <label>Older than <input type="number" name="min_age_days" min="0" step="1" size="4"
   value="{{ f.min_age_days if f.min_age_days is not none else '' }}"> days</label>
 <button type="submit">Filter</button>
 <span class="muted">as of {{ as_of.strftime('%Y-%m-%d %H:%M') }} UTC</span>
</form>
<p class="muted">{{ rows|length }} exception{{ '' if rows|length == 1 else 's' }}{% if rows|length >= limit %} (first {{ limit }}){% endif %}</p>
<table id="exceptions">
<thead><tr><th>#</th><th>Type</th><th>Owner</th><th>Status</th><th>Subject</th><th>SKU</th><th>Detail</th>
<th>Opened</th><th>Age (days)</th><th>SLA (days)</th></tr></thead>
<tbody>
{% for r in rows %}
<tr class="{{ 'overdue' if r.overdue else '' }}" data-exception-id="{{ r.exception_id }}">
 <td><a href="{{ base }}/exceptions/{{ r.exception_id }}">{{ r.exception_id }}</a></td>
 <td>{{ r.type }}</td><td>{{ r.owner }}</td><td class="status-{{ r.status }}">{{ r.status }}</td>
 <td>{{ r.subject_key }}</td><td>{{ r.sku or '' }}</td><td>{{ r.detail }}</td>
 <td>{{ r.opened_at }}</td><td>{{ r.age_days if r.age_days is not none else '' }}</td>
 <td>{{ r.sla_days if r.sla_days is not none else '' }}{% if r.overdue %} &#9888; overdue{% endif %}</td>
</tr>
{% else %}
<tr><td colspan="10" class="muted">No exceptions match these filters.</td></tr>
{% endfor %}
</tbody></table>
{% endblock %}
"""

_DETAIL = """{% extends "base" %}
{% block title %}Exception {{ x.exception_id }} &middot; Returns exceptions{% endblock %}
{% block body %}
<h1>Exception {{ x.exception_id }}: {{ x.type }} <span class="status-{{ x.status }}">({{ x.status }})</span></h1>
<table id="exception" class="kv">
{% for k, v in x.items() if k != 'what_to_do' %}<tr><th>{{ k }}</th><td>{{ v|show }}</td></tr>{% endfor %}
</table>
{% if what_to_do %}<p><strong>What to do:</strong> {{ what_to_do }}</p>{% endif %}

{% if x.status == 'open' and not can_act %}
<p class="muted" id="read-only">You can read this exception. Resolving, dismissing, retrying and adding a mapping
 or a SKU need {{ act_requirement }}; ask someone who has it.</p>
{% elif x.status == 'open' %}
<h2>Act</h2>
{% if x.type == 'UNMAPPED_REASON_CODE' %}
<form class="inline" method="post" action="{{ base }}/exceptions/{{ x.exception_id }}/mapping" id="mapping-form">
 <input type="hidden" name="csrf_token" value="{{ csrf }}">
 <label>Map ReBound reason <strong>{{ rebound_reason or '?' }}</strong> to Amazon reason
 <input name="amazon_reason" list="amazon-reasons" required pattern="(CR-|UNDELIVERABLE_)[A-Z_]+" size="28"></label>
 <datalist id="amazon-reasons">{% for c in reason_codes %}<option value="{{ c }}">{% endfor %}</datalist>
 <button type="submit">Add mapping and resolve</button>
</form>
{% endif %}
{% if x.type == 'SKU_MISMATCH' %}
<form class="inline" method="post" action="{{ base }}/exceptions/{{ x.exception_id }}/sku" id="sku-form">
 <input type="hidden" name="csrf_token" value="{{ csrf }}">
 <p>Add SKU <strong>{{ x.sku or '?' }}</strong> to the catalog</p>
 <label>ASIN <input name="asin" required size="12"></label>
 <label>Unit cost <input name="unit_cost" required inputmode="decimal" size="8"></label>
 <label>Available <input name="available" type="number" min="0" step="1" required size="6"></label>
 <button type="submit">Add SKU and resolve</button>
</form>
{% endif %}
{% if over_received %}
<form class="inline" method="post" action="{{ base }}/exceptions/{{ x.exception_id }}/credit-quantity" id="credit-quantity-form">
 <input type="hidden" name="csrf_token" value="{{ csrf }}">
 <p>{{ over_received.received }} unit(s) received, {{ over_received.announced }} announced: the credit is held
 until you choose how many units to credit (0 closes the line with nothing owed).</p>
 <label>Units to credit <input name="credit_quantity" type="number" min="0" max="{{ over_received.received }}"
 step="1" required size="6"></label>
 <label>Note <input name="note" size="30"></label>
 <button type="submit">Credit this quantity and resolve</button>
</form>
{% endif %}
{% if retryable %}
<form class="inline" method="post" action="{{ base }}/exceptions/{{ x.exception_id }}/retry" id="retry-form">
 <input type="hidden" name="csrf_token" value="{{ csrf }}">
 <button type="submit">Retry the Amazon submission</button>
</form>
{% endif %}
<form class="inline" method="post" action="{{ base }}/exceptions/{{ x.exception_id }}/resolve" id="resolve-form">
 <input type="hidden" name="csrf_token" value="{{ csrf }}">
 <label>Resolution <input name="resolution" required size="40"></label>
 <button type="submit">Resolve</button>
</form>
<form class="inline" method="post" action="{{ base }}/exceptions/{{ x.exception_id }}/dismiss" id="dismiss-form">
 <input type="hidden" name="csrf_token" value="{{ csrf }}">
 <label>Why dismiss <input name="reason" required size="40"></label>
 <button type="submit">Dismiss</button>
</form>
{% endif %}

{% for title, section in sections %}
<h2>{{ title }}</h2>
{% if section is none %}<p class="muted">none</p>
{% elif section is mapping %}
<table class="section kv">{% for k, v in section.items() %}<tr><th>{{ k }}</th><td>{{ v|show }}</td></tr>{% endfor %}</table>
{% elif section is sequence and section is not string %}
{% if section %}
{% set cols = section|columns %}
<table class="section"><thead><tr>{% for c in cols %}<th>{{ c }}</th>{% endfor %}</tr></thead><tbody>
{% for row in section %}<tr>{% for c in cols %}<td>{{ (row[c] if row is mapping else row)|show }}</td>{% endfor %}</tr>{% endfor %}
</tbody></table>
{% else %}<p class="muted">none</p>{% endif %}
{% else %}<p>{{ section|show }}</p>{% endif %}
{% endfor %}
{% endblock %}
"""

_PROBLEM = """{% extends "base" %}
{% block body %}<h1>{{ title }}</h1><p>{{ text }}</p>
{% if login_url %}<p><a href="{{ login_url }}" id="login-link">Log in to Airflow</a></p>{% endif %}
{% endblock %}
"""


def _show(value: Any) -> Any:
    """Payloads as indented JSON; everything else as text (autoescaped by jinja)."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return Markup("<pre>{}</pre>").format(
            json.dumps(value, indent=2, sort_keys=True, default=str))
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return value


def _columns(rows: list) -> list[str]:
    cols: list[str] = []
    for row in rows:
        if isinstance(row, dict):
            cols.extend(k for k in row if k not in cols)
    return cols or ["value"]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.DictLoader({"base": _BASE, "list": _LIST, "detail": _DETAIL,
                                                      "problem": _PROBLEM}),
                             autoescape=True, undefined=jinja2.ChainableUndefined)
    env.filters["show"] = _show
    env.filters["columns"] = _columns
    return env


# --- the app ------------------------------------------------------------------------------------

def default_dsn() -> str:
    """The ledger DSN: Airflow's returns_db connection inside Airflow, else RETURNLEDGER_DSN."""
    try:
        from returnledger.airflow.adapter import get_dsn

        return get_dsn()
    except Exception as exc:  # not inside Airflow, or no returns_db connection defined
        log.debug("returns_db connection unavailable (%s); using RETURNLEDGER_DSN", exc)
        from returnledger.store.db import resolve_dsn

        return resolve_dsn()


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _over_received(x: dict, line: dict) -> dict | None:
    """A QUANTITY_MISMATCH whose line received more than announced and has no credit quantity chosen yet."""
    received, announced = line.get("quantity_received"), line.get("quantity_announced")
    if (x.get("type") != "QUANTITY_MISMATCH" or received is None or announced is None or received <= announced
            or line.get("credit_quantity") is not None):
        return None
    return {"received": received, "announced": announced}


def _optional_int(value: str | None, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except ValueError:
        raise HTTPException(400, f"{name} must be a whole number") from None
    if number < 0:
        raise HTTPException(400, f"{name} must not be negative")
    return number


def _as_of(value: str | None, clock: Callable[[], datetime]) -> datetime:
    """The page's reference time: ?as_of=YYYY-MM-DD (end of that day, UTC) or the clock."""
    if not value:
        return clock()
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise HTTPException(400, "as_of must be a date (YYYY-MM-DD)") from None
    return datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=timezone.utc)


def _row_view(row: dict, as_of: datetime) -> dict:
    """Age and SLA breach for a listed exception (taken from the row when the queue computed them)."""
    r = dict(row)
    opened = r.get("opened_at")
    if r.get("age_days") is None and isinstance(opened, datetime):
        r["age_days"] = max((as_of - opened).days, 0)
    if "overdue" not in r:
        sla, age = r.get("sla_days"), r.get("age_days")
        breached = r.get("sla_breached")
        if breached is None:
            breached = sla is not None and age is not None and age > sla
        r["overdue"] = r.get("status") == "open" and bool(breached)
    return r


def create_console_app(dsn_provider: Callable[[], str] | None = None, auth: AirflowAuth | None = None,
                       clock: Callable[[], datetime] | None = None, list_limit: int = 500) -> FastAPI:
    """The console as a FastAPI app; the plugin mounts it under /returnledger.

    ``dsn_provider`` returns the ledger DSN on each request (default: returns_db
    connection, else RETURNLEDGER_DSN); ``auth`` validates tokens (default: the
    api-server's auth manager); ``clock`` gives the time actions are recorded at.
    """
    dsn_provider = dsn_provider or default_dsn
    auth = auth or AirflowAuth()
    clock = clock or _utcnow
    env = _environment()
    app = FastAPI(title="Returns exceptions", docs_url=None, redoc_url=None, openapi_url=None)

    def base_of(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    def page(request: Request, template: str, status_code: int = 200, caller: Caller | None = None,
             **context) -> HTMLResponse:
        html = env.get_template(template).render(base=base_of(request), user=caller.name if caller else "",
                                                 read_only=bool(caller) and not caller.may_act, **context)
        return HTMLResponse(html, status_code=status_code,
                            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    def refusal(request: Request, exc: Exception, caller: Caller | None = None) -> Response:
        code = 401 if isinstance(exc, NotAuthenticated) else 403
        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else {}
        if "text/html" in request.headers.get("accept", ""):
            next_url = str(request.url) if request.method == "GET" else base_of(request) + "/"
            resp = page(request, "problem", status_code=code, caller=caller,
                        title="Sign-in required" if code == 401 else "Not allowed", text=str(exc),
                        login_url=auth.login_url(next_url))
            resp.headers.update(headers)
            return resp
        return Response(json.dumps({"detail": str(exc)}), status_code=code, headers=headers,
                        media_type="application/json")

    @app.middleware("http")
    async def require_airflow_user(request: Request, call_next):
        """Every route, known or not, needs an Airflow user who may read; anything but GET/HEAD changes
        the ledger, so it also needs a user who may act (Op/Admin), and, from a browser, the CSRF checks."""
        caller: Caller | None = None
        try:
            caller = await _authenticate(request, auth)
            if request.method not in ("GET", "HEAD") and not caller.may_act:
                log.warning("console: %s refused: %s %s (may read, may not act)", caller.name, request.method,
                            request.url.path)
                raise Forbidden(_may_not_act(auth, caller))
            if request.method not in ("GET", "HEAD") and caller.via_cookie:
                _check_same_origin(request)
                await request.body()  # cached, so the route can read the form again
                form = await request.form()
                sent = str(form.get(CSRF_FIELD) or "")
                if not hmac.compare_digest(sent, csrf_token_for(caller.token)):
                    raise Forbidden("Missing or wrong CSRF token; reload the page and try again")
        except (NotAuthenticated, Forbidden) as exc:
            return refusal(request, exc, caller)
        request.state.caller = caller
        return await call_next(request)

    #: on every state-changing route; the middleware has refused already, this keeps new routes honest
    ACT = [Depends(require_may_act)]

    def connect():
        from returnledger.store.db import connect as db_connect

        return db_connect(dsn_provider())

    @app.get("/", response_class=HTMLResponse)
    def list_page(request: Request, owner: str | None = None, type: str | None = None,
                  status: str | None = "open", min_age_days: str | None = None, as_of: str | None = None,
                  msg: str | None = None):
        from returnledger.exception_queue import queue

        caller: Caller = request.state.caller
        type_ = type or None
        if type_ and type_ not in ExceptionType.__members__:
            raise HTTPException(400, f"unknown exception type {type_!r}")
        status_ = None if status in (None, "", "all") else status
        if status_ and status_ not in {s.value for s in ExceptionStatus}:
            raise HTTPException(400, f"unknown status {status_!r}")
        min_age = _optional_int(min_age_days, "min_age_days")
        when = _as_of(as_of, clock)
        with connect() as conn:
            rows = queue.list_exceptions(conn, owner=owner or None, type=type_, status=status_,
                                         min_age_days=min_age, as_of=when, limit=list_limit)
            owners = [r[0] for r in conn.execute(
                "SELECT owner FROM ledger.owner_team UNION SELECT owner FROM ledger.exception ORDER BY 1")]
        owners = sorted(set(owners) | set(queue.DEFAULT_OWNERS.values()))
        return page(request, "list", caller=caller, rows=[_row_view(r, when) for r in rows], owners=owners,
                    types=[t.value for t in ExceptionType], statuses=["open", "resolved", "dismissed", "all"],
                    f={"owner": owner or "", "type": type_ or "", "status": status or "all",
                       "min_age_days": min_age}, as_of=when, limit=list_limit, message=msg)

    def detail_page(request: Request, exception_id: int, *, message: str | None = None,
                    error: str | None = None, status_code: int = 200) -> HTMLResponse:
        from returnledger.exception_queue import queue

        caller: Caller = request.state.caller
        with connect() as conn:
            try:
                detail = queue.exception_detail(conn, exception_id)
            except LookupError:
                raise HTTPException(404, f"exception {exception_id} not found") from None
        x = dict(detail["exception"])
        sections = [(SECTION_TITLES.get(k, k.replace("_", " ").capitalize()), v)
                    for k, v in detail.items() if k != "exception"]
        line = detail.get("line") or {}
        return page(request, "detail", status_code=status_code, caller=caller, x=x, sections=sections,
                    can_act=caller.may_act, act_requirement=auth.act_requirement(),
                    csrf=csrf_token_for(caller.token) if caller.may_act else "", reason_codes=AMAZON_REASON_CODES,
                    rebound_reason=line.get("reason"), retryable=x.get("type") in RETRYABLE_TYPES,
                    over_received=_over_received(x, line),
                    message=message, error=error, what_to_do=x.get("what_to_do"))

    @app.get("/exceptions/{exception_id}", response_class=HTMLResponse)
    def exception_page(request: Request, exception_id: int, msg: str | None = None):
        return detail_page(request, exception_id, message=msg)

    async def act(request: Request, exception_id: int, verb: str, run: Callable[[str, str, dict], Any],
                  done: str):
        """Run one lifecycle action as the signed-in user; back to the exception page either way."""
        caller: Caller = request.state.caller
        form = {k: str(v).strip() for k, v in (await request.form()).items() if k != CSRF_FIELD}
        import psycopg
        from starlette.concurrency import run_in_threadpool

        try:
            await run_in_threadpool(run, dsn_provider(), caller.name, form)
        except LookupError:
            raise HTTPException(404, f"exception {exception_id} not found") from None
        except (ValueError, psycopg.errors.IntegrityError, psycopg.errors.DataError) as exc:
            # ExceptionActionError: the action does not fit the exception's state (already closed, wrong type)
            conflict = type(exc).__name__ == "ExceptionActionError"
            log.info("console %s on exception %s refused: %s", verb, exception_id, exc)
            return await run_in_threadpool(detail_page, request, exception_id, error=f"Could not {verb}: {exc}",
                                           status_code=409 if conflict else 400)
        log.info("console: %s %s exception %s", caller.name, verb, exception_id)
        query = urlencode({"msg": done.format(user=caller.name)})
        return RedirectResponse(f"{base_of(request)}/exceptions/{exception_id}?{query}", status_code=303)

    def required(form: dict, name: str) -> str:
        if not form.get(name):
            raise ValueError(f"{name.replace('_', ' ')} is required")
        return form[name]

    @app.post("/exceptions/{exception_id}/resolve", dependencies=ACT)
    async def resolve(request: Request, exception_id: int):
        from returnledger.exception_queue import queue

        return await act(request, exception_id, "resolve", lambda dsn, actor, form: queue.resolve_exception(
            dsn, exception_id, actor=actor, resolution=required(form, "resolution"), at=clock()),
            "Resolved by {user}. Held lines, if any, are released on the next sync run.")

    @app.post("/exceptions/{exception_id}/dismiss", dependencies=ACT)
    async def dismiss(request: Request, exception_id: int):
        from returnledger.exception_queue import queue

        return await act(request, exception_id, "dismiss", lambda dsn, actor, form: queue.dismiss_exception(
            dsn, exception_id, actor=actor, reason=required(form, "reason"), at=clock()),
            "Dismissed by {user}.")

    @app.post("/exceptions/{exception_id}/retry", dependencies=ACT)
    async def retry(request: Request, exception_id: int):
        from returnledger.exception_queue import queue

        return await act(request, exception_id, "retry", lambda dsn, actor, form: queue.retry_submission(
            dsn, exception_id, actor=actor, at=clock()),
            "Retry requested by {user}: the submission goes to Amazon again on the next sync run.")

    @app.post("/exceptions/{exception_id}/mapping", dependencies=ACT)
    async def add_mapping(request: Request, exception_id: int):
        from returnledger.exception_queue import queue

        def run(dsn, actor, form):
            reason = required(form, "amazon_reason").upper()
            return queue.resolve_with_mapping(dsn, exception_id, reason, actor=actor, at=clock())

        return await act(request, exception_id, "add the mapping", run,
                         "Mapping added and exception resolved by {user}; held lines are released on the next sync run.")

    @app.post("/exceptions/{exception_id}/credit-quantity", dependencies=ACT)
    async def credit_quantity(request: Request, exception_id: int):
        from returnledger.exception_queue import queue

        def run(dsn, actor, form):
            try:
                quantity = int(required(form, "credit_quantity"))
            except ValueError:
                raise ValueError("the quantity to credit must be a whole number") from None
            return queue.resolve_over_receipt(dsn, exception_id, quantity, actor=actor, at=clock(),
                                              note=form.get("note", ""))

        return await act(request, exception_id, "choose the quantity to credit", run,
                         "Quantity to credit chosen by {user}; the credit note goes to Amazon on the next sync run.")

    @app.post("/exceptions/{exception_id}/sku", dependencies=ACT)
    async def add_sku(request: Request, exception_id: int):
        from returnledger.exception_queue import queue

        def run(dsn, actor, form):
            try:
                unit_cost = Decimal(required(form, "unit_cost"))
            except InvalidOperation:
                raise ValueError("unit cost must be a number") from None
            try:
                available = int(required(form, "available"))
            except ValueError:
                raise ValueError("available must be a whole number") from None
            if unit_cost < 0 or available < 0:
                raise ValueError("unit cost and available must be zero or more")
            return queue.resolve_with_sku(dsn, exception_id, required(form, "asin"), unit_cost, available,
                                          actor=actor, at=clock())

        return await act(request, exception_id, "add the SKU", run,
                         "SKU added and exception resolved by {user}; held lines are released on the next sync run.")

    @app.exception_handler(HTTPException)
    async def http_problem(request: Request, exc: HTTPException):
        caller = getattr(request.state, "caller", None)
        return page(request, "problem", status_code=exc.status_code, caller=caller,
                    title=f"{exc.status_code}", text=str(exc.detail), login_url=None)

    return app
