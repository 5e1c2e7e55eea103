"""``returnledger reference|mapping|sku``: the reference data operators maintain (seed files, the reason-code
map, the SKU catalog)."""

from __future__ import annotations

import argparse
from pathlib import Path

from returnledger.cli.common import login_name, print_json, refusing, utc_time


def _cmd_reference_load(args) -> int:
    from returnledger.reference.load import load_reference
    from returnledger.store.db import resolve_dsn

    return print_json(
        load_reference(resolve_dsn(), args.folder, at=utc_time(args.at), actor=args.actor), sort_keys=True
    )


def _cmd_mapping_add(args) -> int:
    from returnledger.reference.mappings import add_reason_mapping
    from returnledger.store.db import resolve_dsn

    changed = add_reason_mapping(
        resolve_dsn(),
        args.rebound_reason,
        args.amazon_reason,
        at=utc_time(args.at),
        actor=args.actor,
        why=args.why,
    )
    return print_json(
        {"rebound_reason": args.rebound_reason, "amazon_reason": args.amazon_reason, "changed": changed},
        sort_keys=True,
    )


def _cmd_mapping_deactivate(args) -> int:
    from returnledger.reference.mappings import deactivate_reason_mapping
    from returnledger.store.db import resolve_dsn

    changed = deactivate_reason_mapping(
        resolve_dsn(), args.rebound_reason, at=utc_time(args.at), actor=args.actor, why=args.why
    )
    return print_json(
        {"rebound_reason": args.rebound_reason, "active": False, "changed": changed}, sort_keys=True
    )


def _cmd_sku_add(args) -> int:
    from returnledger.reference.skus import add_sku
    from returnledger.store.db import resolve_dsn

    changed = add_sku(
        resolve_dsn(),
        args.sku,
        args.asin,
        args.unit_cost,
        args.available,
        at=utc_time(args.at),
        actor=args.actor,
    )
    return print_json({"sku": args.sku, "changed": changed}, sort_keys=True)


def _reference_actor() -> str:
    name = login_name()
    return f"cli:{name}" if name else "cli"


def register(subparsers) -> None:
    """``reference load``, ``mapping add|deactivate`` and ``sku add``."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--actor", default=_reference_actor(), help="who makes the change (audit log)")
        p.add_argument("--at", default=None, help="ISO timestamp of the change (default: now)")

    ref = subparsers.add_parser("reference", help="reference data (reason codes, policy, owners)")
    ref_sub = ref.add_subparsers(dest="reference_command", required=True)
    p = ref_sub.add_parser("load", help="upsert include/reference/ into the ledger (idempotent)")
    p.add_argument("--folder", type=Path, default=None, help="folder with the seed files")
    common(p)
    p.set_defaults(func=refusing(_cmd_reference_load), actor="reference-loader")

    mapping = subparsers.add_parser("mapping", help="ReBound -> Amazon reason-code map")
    map_sub = mapping.add_subparsers(dest="mapping_command", required=True)
    p = map_sub.add_parser("add", help="map a ReBound reason to an Amazon CR- code (releases held lines)")
    p.add_argument("rebound_reason")
    p.add_argument("amazon_reason")
    p.add_argument("--why", default=None, help="reason for the change (kept in the mapping history)")
    common(p)
    p.set_defaults(func=refusing(_cmd_mapping_add))
    p = map_sub.add_parser("deactivate", help="stop using a mapping (kept in history)")
    p.add_argument("rebound_reason")
    p.add_argument("--why", default=None)
    common(p)
    p.set_defaults(func=refusing(_cmd_mapping_deactivate))

    sku = subparsers.add_parser("sku", help="SKU catalog")
    sku_sub = sku.add_subparsers(dest="sku_command", required=True)
    p = sku_sub.add_parser("add", help="add a SKU (releases lines held for it)")
    p.add_argument("sku")
    p.add_argument("asin")
    p.add_argument("unit_cost", help="decimal, e.g. 15.00")
    p.add_argument("available", type=int, help="starting available stock at the warehouse")
    common(p)
    p.set_defaults(func=refusing(_cmd_sku_add))
