"""The SKU catalogue: each SKU's ASIN, unit cost (what a credit note is priced from) and stock."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

import psycopg

from returnledger.money import to_pennies
from returnledger.reference.change import REFERENCE_LOCK, clean
from returnledger.store.audit import record
from returnledger.store.db import unit_of_work


@dataclass(frozen=True)
class SkuEntry:
    sku: str
    asin: str
    unit_cost: Decimal
    available: int


def sku_entry(sku, asin, unit_cost, available) -> SkuEntry:
    """A validated catalog entry (clear errors before the database's CHECKs)."""
    sku = clean(sku, "sku")
    asin = clean(asin, f"asin of {sku}")
    try:
        cost = Decimal(str(unit_cost).strip())
    except InvalidOperation:
        raise ValueError(f"unit_cost of {sku} must be a decimal amount, got {unit_cost!r}") from None
    if not cost.is_finite() or cost < 0:
        raise ValueError(f"unit_cost of {sku} must be >= 0, got {unit_cost!r}")
    if cost != to_pennies(cost):
        raise ValueError(f"unit_cost of {sku} has more than two decimals: {unit_cost!r}")
    try:
        stock = int(str(available).strip())
    except ValueError:
        raise ValueError(f"available of {sku} must be a whole number, got {available!r}") from None
    if stock < 0:
        raise ValueError(f"available of {sku} must be >= 0, got {available!r}")
    return SkuEntry(sku, asin, to_pennies(cost), stock)


def write_skus(
    conn: psycopg.Connection,
    entries: Iterable[SkuEntry],
    *,
    at: datetime,
    actor: str,
    reset_stock: bool = False,
) -> int:
    """Add new SKUs; correct asin/unit_cost of known ones.

    ``available`` is the starting stock of a new SKU. Once a SKU is in the catalog its stock is
    the ledger's (restocks move it), so a repeated add does not overwrite it unless ``reset_stock``.
    """
    wanted: dict[str, SkuEntry] = {}
    for e in entries:
        if e.sku in wanted and wanted[e.sku] != e:
            raise ValueError(f"sku {e.sku} is listed twice with different values")
        wanted[e.sku] = e
    if not wanted:
        return 0
    current = {
        s: SkuEntry(s, a, c, n)
        for s, a, c, n in conn.execute(
            "SELECT sku, asin, unit_cost, available FROM ledger.sku WHERE sku = ANY(%s)", (list(wanted),)
        )
    }
    rows, audit = [], []
    for sku, new in wanted.items():
        old = current.get(sku)
        if old is not None and not reset_stock:
            new = SkuEntry(sku, new.asin, new.unit_cost, old.available)
        if old == new:
            continue
        rows.append(new)
        audit.append(
            (
                "sku.add" if old is None else "sku.change",
                f"sku:{sku}",
                {
                    "old": None
                    if old is None
                    else {"asin": old.asin, "unit_cost": old.unit_cost, "available": old.available},
                    "new": {"asin": new.asin, "unit_cost": new.unit_cost, "available": new.available},
                },
            )
        )
    if not rows:
        return 0
    conn.execute(
        "INSERT INTO ledger.sku (sku, asin, unit_cost, available, updated_at, updated_by)"
        " SELECT x.s, x.a, x.c, x.n, %(at)s, %(actor)s"
        " FROM unnest(%(sku)s::text[], %(asin)s::text[], %(cost)s::numeric[], %(n)s::int[]) AS x(s, a, c, n)"
        " ON CONFLICT (sku) DO UPDATE SET asin = EXCLUDED.asin, unit_cost = EXCLUDED.unit_cost,"
        " available = EXCLUDED.available, updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by",
        {
            "sku": [r.sku for r in rows],
            "asin": [r.asin for r in rows],
            "cost": [r.unit_cost for r in rows],
            "n": [r.available for r in rows],
            "at": at,
            "actor": actor,
        },
    )
    record(conn, audit, at=at, actor=actor)
    return len(rows)


def add_sku(
    dsn_or_conn,
    sku: str,
    asin: str,
    unit_cost,
    available,
    *,
    at: datetime,
    actor: str,
    reset_stock: bool = False,
) -> bool:
    """Add a SKU to the catalog (or correct its ASIN / unit cost); True when something changed."""
    entry = sku_entry(sku, asin, unit_cost, available)
    actor = clean(actor, "actor")
    with unit_of_work(dsn_or_conn, lock=REFERENCE_LOCK) as conn:
        return write_skus(conn, [entry], at=at, actor=actor, reset_stock=reset_stock) > 0
