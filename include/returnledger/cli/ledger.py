"""``returnledger migrate|db|reference|mapping|sku``: the ledger database and its reference data."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from returnledger.cli.common import login_name, print_json, refusing, utc_time


def _cmd_migrate(args) -> int:
    from returnledger.store import db, migrate

    dsn = db.resolve_dsn()
    if args.create_database and migrate.ensure_database(dsn):
        print("created the ledger database")
    if args.reset:
        migrate.reset(dsn, database=args.database)
    applied = migrate.migrate(
        dsn,
        owner=args.owner,
        runtime=args.runtime_role,
        runtime_password=os.environ.get("RETURNLEDGER_LEDGER_PASSWORD"),
    )
    print("applied: " + (", ".join(applied) if applied else "nothing (schema is current)"))
    return 0


def _cmd_db(args) -> int:
    from returnledger.store import db

    if args.action == "start":
        print(db.embedded_dsn())
    elif args.action == "stop":
        print("stopped" if db.stop_embedded() else "not running")
    else:
        print(db.resolve_dsn())
    return 0


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


def _register_reference(subparsers) -> None:
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


def register(subparsers) -> None:
    """``migrate``, ``db``, ``reference load``, ``mapping add|deactivate`` and ``sku add``."""
    m = subparsers.add_parser("migrate", help="apply pending schema migrations (idempotent)")
    m.add_argument(
        "--reset",
        action="store_true",
        help="drop the ledger schema first (loses every ledger row); needs --database naming the database",
    )
    m.add_argument(
        "--database", help="with --reset: the name of the DSN's database, to confirm which is wiped"
    )
    m.add_argument("--create-database", action="store_true", help="create the DSN's database if missing")
    m.add_argument(
        "--owner",
        help="role that owns the ledger schema and its objects; nobody logs in as it (created NOLOGIN if "
        "missing; default returnledger_owner when --runtime-role is given)",
    )
    m.add_argument(
        "--runtime-role",
        help="least-privilege login role the DAGs, workers and console use: rows only, owns nothing "
        "(created if missing; password from RETURNLEDGER_LEDGER_PASSWORD), e.g. returnledger",
    )
    m.set_defaults(func=_cmd_migrate)
    d = subparsers.add_parser("db", help="the embedded PostgreSQL under .local/")
    d.add_argument("action", choices=["start", "stop", "dsn"])
    d.set_defaults(func=_cmd_db)
    _register_reference(subparsers)
