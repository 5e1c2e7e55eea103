"""``returnledger`` command line: the operator's and the developer's entry point.

Database commands use ``RETURNLEDGER_DSN`` or the embedded PostgreSQL under
.local/. Subcommands of other modules (reference data, exceptions, sandbox)
register themselves through their ``register_cli(subparsers)``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

# modules that add their own subcommands
PLUGGED = ["returnledger.reference.catalog", "returnledger.exception_queue.queue", "returnledger.reports.digests",
           "returnledger.reconciliation.amazon_export", "returnledger.reconciliation.match", "returnledger.reports.finance",
           "returnledger.sandbox.serve", "returnledger.local_cluster"]


def _cmd_migrate(args) -> int:
    import os

    from returnledger.store import db, migrate

    dsn = db.resolve_dsn()
    if args.create_database and migrate.ensure_database(dsn):
        print("created the ledger database")
    if args.reset:
        migrate.reset(dsn)
    applied = migrate.migrate(dsn, owner=args.owner, owner_password=os.environ.get("RETURNLEDGER_LEDGER_PASSWORD"))
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


def _cmd_settings(args) -> int:
    from returnledger.settings import load_settings, shell_exports

    s = load_settings()
    if args.pools:
        for p in s["pools"]:
            print(f"{p['name']}\t{p['slots']}\t{p['description']}")
    else:
        print(shell_exports(s))
    return 0


def _cmd_demo(args) -> int:
    from datetime import date

    from returnledger.runner import demo

    days = None
    if args.days:
        a, _, b = args.days.partition(":")
        days = (date.fromisoformat(a), date.fromisoformat(b or a))
    # one line per day and the summary on screen, the rest in OUT/demo.log; Ctrl-C / SIGTERM stop it
    return demo(Path(args.scenario), Path(args.out), keep_db=args.keep_db, faults=not args.no_faults,
                days=days, close=not args.no_close)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="returnledger", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("migrate", help="apply pending schema migrations (idempotent)")
    m.add_argument("--reset", action="store_true", help="drop the ledger schema first (loses data)")
    m.add_argument("--create-database", action="store_true", help="create the DSN's database if missing")
    m.add_argument("--owner", help="least-privilege login role that owns the ledger (created if missing; "
                                   "password from RETURNLEDGER_LEDGER_PASSWORD), e.g. returnledger")
    m.set_defaults(func=_cmd_migrate)
    d = sub.add_parser("db", help="the embedded PostgreSQL under .local/")
    d.add_argument("action", choices=["start", "stop", "dsn"])
    d.set_defaults(func=_cmd_db)
    s = sub.add_parser("airflow-settings", help="airflow_settings.yaml as shell exports (or --pools)")
    s.add_argument("--pools", action="store_true")
    s.set_defaults(func=_cmd_settings)
    demo = sub.add_parser("demo", help="run a whole scenario through Airflow and write the outputs "
                                       "(screen: one line per day and the summary; the rest: OUT/demo.log)")
    demo.add_argument("--scenario", required=True)
    demo.add_argument("--out", default="out")
    demo.add_argument("--keep-db", action="store_true", help="do not start from a clean ledger")
    demo.add_argument("--no-faults", action="store_true", help="ignore the scenario's injected faults")
    demo.add_argument("--days", help="only these days FROM[:TO] (YYYY-MM-DD), e.g. to rerun one day")
    demo.add_argument("--no-close", action="store_true", help="skip the month-end close run")
    demo.set_defaults(func=_cmd_demo)
    for name in PLUGGED:
        module = importlib.import_module(name)
        if hasattr(module, "register_cli"):
            module.register_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
