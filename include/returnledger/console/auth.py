"""Who may use the returns exceptions console, and who may act in it.

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
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

log = logging.getLogger(__name__)

RESOURCE_NAME = "Returns exceptions"  # the custom view name the auth manager is asked about
COOKIE_NAME = "_token"  # airflow.api_fastapi.auth.managers.base_auth_manager.COOKIE_NAME_JWT_TOKEN
CSRF_FIELD = "csrf_token"


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
        if credentials is not None:  # get_user's own precedence: the explicit credential wins
            return user, credentials.credentials, False
        return user, request.cookies.get(COOKIE_NAME) or "", True

    def _is_simple(self, manager) -> bool:
        cls = _simple_auth_manager_cls()
        return cls is not None and isinstance(manager, cls)

    def may_read(self, user: Any) -> bool:
        return bool(
            self._manager().is_authorized_custom_view(method="GET", resource_name=RESOURCE_NAME, user=user)
        )

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

    def may_admin(self, user: Any) -> bool:
        """Reopen a closed month: the Admin role (simple), configuration rights (others: FAB's Admin)."""
        manager = self._manager()
        if self._is_simple(manager):
            return (getattr(user, "role", None) or "").upper() == "ADMIN"
        return bool(manager.is_authorized_configuration(method="PUT", user=user))

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
    #: an Admin: may also reopen a closed month
    may_admin: bool = False


async def authenticate(request: Request, auth: AirflowAuth) -> Caller:
    """Airflow's get_user for who; the auth manager for may read (else 403) and may act."""
    user, token, via_cookie = await auth.authenticate(request)
    if user is None:
        raise Forbidden("Invalid JWT token")
    name = auth.user_name(user)
    if not auth.may_read(user):
        raise Forbidden(f"{name} may not read the returns exceptions")
    may_act = auth.may_act(user)
    return Caller(
        user=user,
        name=name,
        token=token,
        via_cookie=via_cookie,
        may_act=may_act,
        may_admin=may_act and auth.may_admin(user),
    )


def may_not_act(auth: AirflowAuth, caller: Caller) -> str:
    return (
        f"{auth.describe(caller.user)} may read the returns exceptions but not act on them: resolving, "
        f"dismissing, retrying and adding a mapping or a SKU need {auth.act_requirement()}."
    )


def require_may_act(request: Request) -> None:
    """Route guard on every state-changing route (the middleware refuses first; this keeps it so
    for any route added later)."""
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is None or not caller.may_act:
        raise HTTPException(403, "Not allowed to act on the returns exceptions")


def require_admin(request: Request) -> None:
    """Route guard of the Admin-only actions (reopening a closed month)."""
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is None or not caller.may_admin:
        raise HTTPException(403, "Only an Admin may reopen a closed month")


def csrf_token_for(session_token: str) -> str:
    """Bound to the session JWT: another site can neither read the cookie nor derive this."""
    return hmac.new(session_token.encode(), b"returnledger-console-csrf", hashlib.sha256).hexdigest()


def check_same_origin(request: Request) -> None:
    """Refuse cross-site form posts (Origin, else Referer, must name this host)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        if origin == "null":
            raise Forbidden("Cross-origin form post refused")
        return  # non-browser client; the CSRF token still applies
    host = request.headers.get("host", "")
    if urlsplit(origin).netloc.lower() != host.lower():
        raise Forbidden("Cross-origin form post refused")


async def check_change(request: Request, auth: AirflowAuth, caller: Caller) -> None:
    """Anything but GET/HEAD changes the ledger: refuse (Forbidden) unless the caller may act and, from a
    browser session, the post is same-origin and carries the session's CSRF token."""
    if request.method in ("GET", "HEAD"):
        return
    if not caller.may_act:
        log.warning(
            "console: %s refused: %s %s (may read, may not act)",
            caller.name,
            request.method,
            request.url.path,
        )
        raise Forbidden(may_not_act(auth, caller))
    if caller.via_cookie:
        check_same_origin(request)
        await request.body()  # cached, so the route can read the form again
        form = await request.form()
        sent = str(form.get(CSRF_FIELD) or "")
        if not hmac.compare_digest(sent, csrf_token_for(caller.token)):
            raise Forbidden("Missing or wrong CSRF token; reload the page and try again")
