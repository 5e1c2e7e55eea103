"""The reason-code map: which Amazon return reason (CR-...) a ReBound reason is credited under.

Every change is kept in ``ledger.reason_mapping_history`` as well as the audit log: finance must be able
to say which mapping a credit note was sent under.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

import psycopg

from returnledger.reference.change import REFERENCE_LOCK, clean
from returnledger.store.audit import record
from returnledger.store.db import unit_of_work

#: the same rule as the CHECK on ledger.reason_mapping, checked first for a readable error
AMAZON_REASON_RE = re.compile(r"^(CR-|UNDELIVERABLE_)[A-Z_]+$")
#: Amazon customer-return reason codes offered when a person adds a mapping (docs: domain.md)
AMAZON_REASON_CODES = (
    "CR-DEFECTIVE",
    "CR-DAMAGED_BY_CARRIER",
    "CR-DAMAGED_BY_FC",
    "CR-NOT_AS_DESCRIBED",
    "CR-SWITCHEROO",
    "CR-MISSING_PARTS",
    "CR-QUALITY_UNACCEPTABLE",
    "CR-UNWANTED_ITEM",
    "CR-ORDERED_WRONG_ITEM",
    "CR-FOUND_BETTER_PRICE",
    "CR-NO_REASON_GIVEN",
    "CR-NOT_COMPATIBLE",
    "CR-EXTRA_ITEM",
    "CR-APPAREL_TOO_SMALL",
    "CR-APPAREL_TOO_LARGE",
    "CR-APPAREL_STYLE",
    "CR-MISORDERED",
    "CR-NEVER_ARRIVED",
    "CR-WARRANTY",
    "CR-UNAUTHORIZED_PURCHASE",
    "CR-OTHER",
)


def check_amazon_reason(amazon_reason: object) -> str:
    code = clean(amazon_reason, "amazon_reason")
    if not AMAZON_REASON_RE.match(code):
        raise ValueError(
            f"amazon_reason {code!r} is not an Amazon return reason code "
            "(expected CR-... or UNDELIVERABLE_..., e.g. CR-DEFECTIVE)"
        )
    return code


def mapping_rows(rows: Iterable[Mapping]) -> dict[str, str]:
    """rebound_reason -> amazon_reason from rows (file or scenario), each checked; a reason mapped twice
    to different codes is refused."""
    out: dict[str, str] = {}
    for i, row in enumerate(rows, start=1):
        reason = clean(row.get("rebound_reason"), f"rebound_reason (row {i})")
        code = check_amazon_reason(row.get("amazon_reason"))
        if reason in out and out[reason] != code:
            raise ValueError(f"rebound_reason {reason} is mapped twice ({out[reason]} and {code})")
        out[reason] = code
    return out


def read_reason_codes(path: Path) -> dict[str, str]:
    """rebound_reason -> amazon_reason from the CSV."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if set(reader.fieldnames or ()) != {"rebound_reason", "amazon_reason"}:
            raise ValueError(f"{path}: header must be rebound_reason,amazon_reason, got {reader.fieldnames}")
        return mapping_rows(reader)


def write_mappings(
    conn: psycopg.Connection,
    wanted: dict[str, tuple[str | None, bool]],
    *,
    at: datetime,
    actor: str,
    why: str | None,
) -> int:
    """Bring mappings to (amazon_reason, active); history and audit only for real changes."""
    if not wanted:
        return 0
    current = {
        r: (a, act)
        for r, a, act in conn.execute(
            "SELECT rebound_reason, amazon_reason, active FROM ledger.reason_mapping"
            " WHERE rebound_reason = ANY(%s)",
            (list(wanted),),
        )
    }
    changes = []  # (reason, old_code, new_code, old_active, new_active)
    for reason, (code, active) in wanted.items():
        old_code, old_active = current.get(reason, (None, None))
        new_code = code if code is not None else old_code
        if new_code is None:
            raise LookupError(f"no reason-code mapping for {reason}")
        if (old_code, old_active) != (new_code, active):
            changes.append((reason, old_code, new_code, old_active, active))
    if not changes:
        return 0
    cols = {
        "reason": [c[0] for c in changes],
        "old_code": [c[1] for c in changes],
        "new_code": [c[2] for c in changes],
        "old_active": [c[3] for c in changes],
        "new_active": [c[4] for c in changes],
        "at": at,
        "actor": actor,
        "why": why,
    }
    conn.execute(
        "INSERT INTO ledger.reason_mapping (rebound_reason, amazon_reason, active, updated_at, updated_by)"
        " SELECT x.r, x.c, x.a, %(at)s, %(actor)s FROM unnest(%(reason)s::text[], %(new_code)s::text[],"
        " %(new_active)s::bool[]) AS x(r, c, a)"
        " ON CONFLICT (rebound_reason) DO UPDATE SET amazon_reason = EXCLUDED.amazon_reason,"
        " active = EXCLUDED.active, updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by",
        cols,
    )
    conn.execute(
        "INSERT INTO ledger.reason_mapping_history (rebound_reason, old_amazon_reason, new_amazon_reason,"
        " old_active, new_active, changed_at, changed_by, why)"
        " SELECT x.r, x.oc, x.nc, x.oa, x.na, %(at)s, %(actor)s, %(why)s"
        " FROM unnest(%(reason)s::text[], %(old_code)s::text[], %(new_code)s::text[], %(old_active)s::bool[],"
        " %(new_active)s::bool[]) AS x(r, oc, nc, oa, na)",
        cols,
    )
    record(
        conn,
        [
            (
                "reason_mapping.deactivate" if not c[4] else "reason_mapping.set",
                f"reason:{c[0]}",
                {
                    "old": {"amazon_reason": c[1], "active": c[3]},
                    "new": {"amazon_reason": c[2], "active": c[4]},
                    **({"why": why} if why else {}),
                },
            )
            for c in changes
        ],
        at=at,
        actor=actor,
    )
    return len(changes)


def add_reason_mapping(
    dsn_or_conn, rebound_reason: str, amazon_reason: str, *, at: datetime, actor: str, why: str | None = None
) -> bool:
    """Map (or remap, or reactivate) a ReBound reason; True when something changed.

    Lines held for this reason are released by the next sync run.
    """
    reason = clean(rebound_reason, "rebound_reason")
    code = check_amazon_reason(amazon_reason)
    actor = clean(actor, "actor")
    with unit_of_work(dsn_or_conn, lock=REFERENCE_LOCK) as conn:
        return write_mappings(conn, {reason: (code, True)}, at=at, actor=actor, why=why) > 0


def deactivate_reason_mapping(
    dsn_or_conn, rebound_reason: str, *, at: datetime, actor: str, why: str | None = None
) -> bool:
    """Stop using a mapping (kept for history); new events with that reason are held again."""
    reason = clean(rebound_reason, "rebound_reason")
    actor = clean(actor, "actor")
    with unit_of_work(dsn_or_conn, lock=REFERENCE_LOCK) as conn:
        return write_mappings(conn, {reason: (None, False)}, at=at, actor=actor, why=why) > 0


def active_mappings(conn: psycopg.Connection) -> dict[str, str]:
    """rebound_reason -> amazon_reason for the mappings in use."""
    return dict(conn.execute("SELECT rebound_reason, amazon_reason FROM ledger.reason_mapping WHERE active"))
