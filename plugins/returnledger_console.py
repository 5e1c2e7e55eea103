"""Airflow plugin: the returns exceptions console in the Airflow UI.

Mounts returnledger.console.app under ``/returnledger`` on the api-server and
adds "Returns exceptions", "Finance", "Find a return" and one "Queue: <team> (N overdue /
M open)" per owner team to the Browse menu (shown inside the UI as embedded
views; the counts are read when the UI loads its navigation, see
returnledger.console.nav). Every route of the console requires a signed-in Airflow
user; reading needs any role, every state-changing action (resolve, dismiss,
retry, add a mapping or a SKU) needs Op or Admin under the SimpleAuthManager
(the "can edit" permission on "Returns exceptions" under FAB); see
returnledger.console.auth. The ledger is reached through the ``returns_db``
connection. Each task of returns_sync and returns_reconciliation that raised
exceptions or sent credit notes gets the extra links "exceptions raised by this
run" and "credit notes sent by this run" (the console's /runs page filtered to
that run; returnledger.airflow.links).
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from returnledger.airflow.links import RaisedExceptionsLink, SentCreditNotesLink

URL_PREFIX = "/returnledger"


@cache
def _console_app():
    # the package (FastAPI, jinja2) is imported only when the api-server collects fastapi_apps
    from returnledger.console.app import create_console_app

    return create_console_app()


class ReturnledgerConsolePlugin(AirflowPlugin):
    name = "returnledger_console"
    #: the exception queue; ``external_views`` adds "Find a return" and each team's queue with its counts
    static_views: ClassVar[list[dict[str, Any]]] = [
        {
            "name": "Returns exceptions",
            "href": f"{URL_PREFIX}/",
            "url_route": "returns-exceptions",  # UI path /plugin/returns-exceptions embeds the console
            "destination": "nav",
            "category": "browse",
        },
        {
            "name": "Finance",
            "href": f"{URL_PREFIX}/finance",
            "url_route": "returns-finance",
            "destination": "nav",
            "category": "browse",
        },
    ]
    #: on each task of returns_sync / returns_reconciliation that raised exceptions or sent credit notes:
    #: the console filtered to that run (returnledger.airflow.links)
    global_operator_extra_links: ClassVar[list[Any]] = [RaisedExceptionsLink(), SentCreditNotesLink()]

    @property
    def external_views(self) -> list[dict[str, Any]]:
        """Asked by the api-server each time the UI loads its navigation: the team queues' names carry
        their overdue and open counts of the moment (returnledger.console.nav)."""
        from returnledger.console.nav import nav_views

        return [*self.static_views, *nav_views(URL_PREFIX)]

    @property
    def fastapi_apps(self):
        """Built on first use: only the api-server asks for it, the scheduler never does."""
        return [{"app": _console_app(), "url_prefix": URL_PREFIX, "name": "Returns exceptions"}]
