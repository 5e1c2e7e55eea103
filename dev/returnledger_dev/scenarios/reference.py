"""A scenario's reference data and operations, loaded into a ledger for the demos, benches and tests.

Production loads the seed files (``returnledger.reference.load``); a scenario carries its own policy, reason
codes and catalog, and the operations people do by hand on given days.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

from returnledger.reference.change import OWNERS_FILE, REFERENCE_LOCK, default_folder
from returnledger.reference.load import write_reference
from returnledger.reference.mappings import add_reason_mapping, mapping_rows
from returnledger.reference.owners import read_owners
from returnledger.reference.policy import policy_from_dict
from returnledger.reference.skus import add_sku, sku_entry, write_skus
from returnledger.store.db import unit_of_work


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
        counts = write_reference(
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


def apply_operations(
    dsn_or_conn, ops: Sequence[Mapping], *, at: datetime, actor: str = "scenario"
) -> list[tuple[Mapping, str]]:
    """A day's operations in order; one the ledger refuses (an operator's request it cannot honour, e.g. an
    over-receipt choice for a line with no over-receipt) is returned with the reason and the rest still
    run, as a person told "no" by the console does not stop the nightly run. Malformed operations still
    raise: they are the scenario's error, not the operator's."""
    from returnledger.exception_queue.queue import ExceptionActionError

    refused: list[tuple[Mapping, str]] = []
    for op in ops:
        try:
            apply_operation(dsn_or_conn, op, at=at, actor=actor)
        except ExceptionActionError as e:
            refused.append((op, str(e)))
    return refused
