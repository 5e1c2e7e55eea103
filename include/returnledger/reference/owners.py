"""Who owns each exception type, how many days they have to act (the SLA) and the first thing to do.

owners.yaml is the one source: it is loaded into ``ledger.owner_team``, and until it is, the queue
and the digests read the same file directly (``default_owners``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

import psycopg
import yaml

from returnledger.exception_types import all_codes
from returnledger.reference.change import OWNERS_FILE, clean, default_folder
from returnledger.store.audit import record


@dataclass(frozen=True)
class Owner:
    owner: str
    sla_days: int
    what_to_do: str


def owners_from_dict(data: Mapping) -> dict[str, Owner]:
    """Validate the owners block: every exception type named, SLAs positive whole days."""
    codes = set(all_codes())  # the exception-type registry's
    unknown = set(data) - codes
    missing = codes - set(data)
    if unknown or missing:
        raise ValueError(f"owners: unknown exception types {sorted(unknown)}, missing {sorted(missing)}")
    out = {}
    for type_, entry in data.items():
        sla = entry.get("sla_days")
        if isinstance(sla, bool) or not isinstance(sla, int) or sla <= 0:
            raise ValueError(f"owners: {type_}.sla_days must be a positive whole number of days, got {sla!r}")
        out[type_] = Owner(
            owner=clean(entry.get("owner"), f"{type_}.owner"),
            sla_days=sla,
            what_to_do=str(entry.get("what_to_do") or "").strip(),
        )
    return out


def read_owners(path: Path) -> dict[str, Owner]:
    with open(path) as f:
        return owners_from_dict(yaml.safe_load(f) or {})


@cache
def default_owners() -> dict[str, Owner]:
    """exception type -> owner from the version-controlled owners.yaml (used while ledger.owner_team
    has no row for a type)."""
    return read_owners(default_folder() / OWNERS_FILE)


def write_owners(conn: psycopg.Connection, owners: Mapping[str, Owner], *, at: datetime, actor: str) -> int:
    """Upsert the owner teams that differ; returns how many changed (each one audited)."""
    current = owner_teams(conn)
    changed = [(t, current.get(t), o) for t, o in sorted(owners.items()) if current.get(t) != o]
    if not changed:
        return 0
    conn.execute(
        "INSERT INTO ledger.owner_team (exception_type, owner, sla_days, what_to_do)"
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::text[])"
        " ON CONFLICT (exception_type) DO UPDATE SET owner = EXCLUDED.owner, sla_days = EXCLUDED.sla_days,"
        " what_to_do = EXCLUDED.what_to_do",
        (
            [c[0] for c in changed],
            [c[2].owner for c in changed],
            [c[2].sla_days for c in changed],
            [c[2].what_to_do for c in changed],
        ),
    )
    record(
        conn,
        [
            ("owner_team.set", f"owner:{t}", {"old": asdict(old) if old else None, "new": asdict(new)})
            for t, old, new in changed
        ],
        at=at,
        actor=actor,
    )
    return len(changed)


def owner_teams(conn: psycopg.Connection) -> dict[str, Owner]:
    """exception type -> owner team, SLA and first step as loaded (what the console and digests show)."""
    return {
        t: Owner(o, s, w)
        for t, o, s, w in conn.execute(
            "SELECT exception_type, owner, sla_days, what_to_do FROM ledger.owner_team"
        )
    }
