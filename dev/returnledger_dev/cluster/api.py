"""Airflow's REST API as the local cluster's admin: how the cluster demo and the bench drive runs."""

from __future__ import annotations

import json
from pathlib import Path

from returnledger_dev.cluster.processes import ClusterError


class AirflowAPI:
    """Airflow's public REST API (/api/v2) as the cluster's admin, with a token from POST /auth/token."""

    def __init__(self, state: dict):
        import httpx

        self.base = state["api_url"]
        password = json.loads(Path(state["password_file"]).read_text())[state["user"]]
        r = httpx.post(
            f"{self.base}/auth/token", json={"username": state["user"], "password": password}, timeout=30
        )
        r.raise_for_status()
        self.http = httpx.Client(
            base_url=f"{self.base}/api/v2",
            timeout=60,
            headers={"Authorization": f"Bearer {r.json()['access_token']}"},
        )

    def _ok(self, r):
        if r.status_code >= 400:
            raise ClusterError(f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text[:500]}")
        return r.json() if r.content else None

    def get(self, path: str, **params):
        return self._ok(self.http.get(path, params=params))

    def post(self, path: str, body: dict):
        return self._ok(self.http.post(path, json=body))

    def patch(self, path: str, body: dict):
        return self._ok(self.http.patch(path, json=body))

    def close(self) -> None:
        self.http.close()
