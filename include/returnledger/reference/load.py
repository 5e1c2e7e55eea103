"""Loading reference data: the seed files (include/reference/) or a scenario's blocks, all read and
checked before anything is written, then upserted in one transaction.

Loading is an upsert: rows named in the files win, rows that are not (mappings and SKUs added by
operators) are left alone, and reloading the same files changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from returnledger.reference.change import (
    OWNERS_FILE,
    POLICY_FILE,
    REASON_CODES_FILE,
    REFERENCE_LOCK,
    default_folder,
)
from returnledger.reference.mappings import (
    add_reason_mapping,
    mapping_rows,
    read_reason_codes,
    write_mappings,
)
from returnledger.reference.owners import read_owners, write_owners
from returnledger.reference.policy import policy_from_dict, read_policy, write_policy
from returnledger.reference.skus import add_sku, sku_entry, write_skus
from returnledger.store.db import unit_of_work


def load_reference(dsn, folder: Path | None = None, *, at: datetime, actor: str = "reference-loader") -> dict:
    """Upsert the seed files into the ledger; returns how many rows of each kind changed.

    All files are read and validated before anything is written, in one transaction.
    """
    folder = Path(folder) if folder else default_folder()
    mappings = read_reason_codes(folder / REASON_CODES_FILE)
    policy = read_policy(folder / POLICY_FILE)
    owners = read_owners(folder / OWNERS_FILE)
    with unit_of_work(dsn, lock=REFERENCE_LOCK) as conn:
        return _write_reference(
            conn, mappings, policy, owners, at=at, actor=actor, why=f"loaded from {REASON_CODES_FILE}"
        )


def _write_reference(conn, mappings: Mapping, policy, owners, *, at: datetime, actor: str, why: str) -> dict:
    """Write the reason mappings (all active), the disposition policy and the owner teams; their counts."""
    n_map = write_mappings(conn, {r: (c, True) for r, c in mappings.items()}, at=at, actor=actor, why=why)
    n_disp, n_set = write_policy(conn, policy, at=at, actor=actor)
    n_own = write_owners(conn, owners, at=at, actor=actor)
    return {
        "reason_mappings": n_map,
        "disposition_policy": n_disp,
        "policy_settings": n_set,
        "owner_teams": n_own,
    }


def load_scenario_reference(
    dsn,
    scenario: Mapping,
    *,
    at: datetime,
    actor: str = "scenario",
    owners_folder: Path | None = None,
    reset_stock: bool = False,
) -> dict:
    """The same from a scenario's ``policy``, ``reason_codes`` and ``catalog``.

    Scenarios carry no owners, so the owner teams come from owners.yaml (configuration, not data).
    """
    policy = policy_from_dict(scenario["policy"])
    mappings = mapping_rows(scenario.get("reason_codes") or [])
    catalog = [
        sku_entry(c.get("sku"), c.get("asin"), c.get("unit_cost"), c.get("available"))
        for c in scenario.get("catalog") or []
    ]
    owners = read_owners(Path(owners_folder or default_folder()) / OWNERS_FILE)
    with unit_of_work(dsn, lock=REFERENCE_LOCK) as conn:
        counts = _write_reference(
            conn,
            mappings,
            policy,
            owners,
            at=at,
            actor=actor,
            why=f"scenario {scenario.get('name', '')}".strip(),
        )
        counts["skus"] = write_skus(conn, catalog, at=at, actor=actor, reset_stock=reset_stock)
    return counts


def operation_subject(op: Mapping) -> str:
    """What one of a scenario's operations is about, for a log line."""
    if op.get("action") == "resolve_over_receipt":
        return f"{op.get('return_id')}|{op.get('line')}: credit {op.get('quantity')} unit(s)"
    return str(op.get("rebound_reason") or op.get("sku"))


def apply_operation(dsn_or_conn, op: Mapping, *, at: datetime, actor: str = "scenario") -> bool:
    """Apply one of a scenario's ``operations`` (what people do by hand) through the operator actions."""
    action = op.get("action")
    if action == "add_reason_mapping":
        return add_reason_mapping(
            dsn_or_conn, op["rebound_reason"], op["amazon_reason"], at=at, actor=actor, why=op.get("why")
        )
    if action == "add_sku":
        return add_sku(
            dsn_or_conn, op["sku"], op["asin"], op["unit_cost"], op["available"], at=at, actor=actor
        )
    if action == "resolve_over_receipt":
        # the warehouse's choice, through the action the console and the CLI call
        from returnledger.exception_queue.actions import resolve_over_receipt_of_line

        resolve_over_receipt_of_line(
            dsn_or_conn,
            op["return_id"],
            op["line"],
            op["quantity"],
            at=at,
            actor=actor,
            note=op.get("why") or "",
        )
        return True
    raise ValueError(f"unknown operation {action!r}")
