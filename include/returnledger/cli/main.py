"""``returnledger`` command line: the operator's entry point.

Database commands use ``RETURNLEDGER_DSN`` or the embedded PostgreSQL under .local/. Each command group
is a module of this package with a ``register(subparsers)``; commands of other installed distributions
(the developer tools of returnledger-dev: sandbox, demo, cluster, ...) join through the entry-point group
``returnledger.commands``, so a dev install adds them and the production image does not.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points

from returnledger.cli import database, exceptions, reconciliation, reference, reports

#: the entry-point group other distributions add commands through (each a ``register(subparsers)``)
COMMANDS_GROUP = "returnledger.commands"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="returnledger", description=(__doc__ or "").splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for group in (database, reference, exceptions, reports, reconciliation):
        group.register(sub)
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        entry.load()(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
