"""Read airflow_settings.yaml (Astro CLI format) into env vars and pools.

``make airflow`` and the demo runner use this so local Airflow gets exactly
the connections, pools and variables the file declares, with ${PROJECT_ROOT}
expanded to the checkout. Nothing here is secret: production connections
come from a secrets backend or AIRFLOW_CONN_* variables.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from returnledger.store.db import project_root


def load_settings(path: Path | None = None, overrides: dict[str, dict] | None = None) -> dict:
    """{'env': {AIRFLOW_CONN_*/AIRFLOW_VAR_*: value}, 'pools': [{name, slots, description}]}."""
    root = project_root()
    path = path or root / "airflow_settings.yaml"
    text = path.read_text().replace("${PROJECT_ROOT}", str(root))
    doc = (yaml.safe_load(text) or {}).get("airflow", {})
    env: dict[str, str] = {}
    for c in doc.get("connections") or []:
        conn = {"conn_type": c.get("conn_type")}
        for key in ("host", "schema", "login", "password", "port"):
            if c.get(f"conn_{key}") not in (None, ""):
                conn[key] = c[f"conn_{key}"]
        if c.get("conn_extra"):
            conn["extra"] = c["conn_extra"]
        conn.update((overrides or {}).get(c["conn_id"], {}))
        conn = {k: v for k, v in conn.items() if v is not None}  # an override of None removes the field
        env[f"AIRFLOW_CONN_{c['conn_id'].upper()}"] = json.dumps(conn)
    for v in doc.get("variables") or []:
        env[f"AIRFLOW_VAR_{v['variable_name'].upper()}"] = str(v["variable_value"])
    pools = [
        {"name": p["pool_name"], "slots": int(p["pool_slot"]), "description": p.get("pool_description") or ""}
        for p in doc.get("pools") or []
    ]
    return {"env": env, "pools": pools}


def shell_exports(settings: dict) -> str:
    import shlex

    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in settings["env"].items())


def apply_env(settings: dict) -> None:
    os.environ.update(settings["env"])


def _cmd_settings(args) -> int:
    s = load_settings()
    if args.pools:
        for p in s["pools"]:
            print(f"{p['name']}\t{p['slots']}\t{p['description']}")
    else:
        print(shell_exports(s))
    return 0


def register(subparsers) -> None:
    """``returnledger airflow-settings``: what ``make airflow`` evals and the pools it sets."""
    s = subparsers.add_parser("airflow-settings", help="airflow_settings.yaml as shell exports (or --pools)")
    s.add_argument("--pools", action="store_true")
    s.set_defaults(func=_cmd_settings)
