"""``returnledger migrate|db``: the ledger database's schema and the embedded PostgreSQL under .local/."""

from __future__ import annotations

import os


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


def register(subparsers) -> None:
    """``migrate`` and ``db``."""
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
