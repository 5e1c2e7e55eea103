"""``returnledger import-amazon-export|reconcile``: bring in Vendor Central's returns export and match
a period's returns against Amazon."""

from __future__ import annotations

from returnledger.cli.common import print_json, utc_time


def _cmd_import(args) -> int:
    from returnledger.reconciliation.amazon_export import AmazonExportRejected, import_amazon_export
    from returnledger.store.db import resolve_dsn

    try:
        r = import_amazon_export(resolve_dsn(args.dsn), args.base_uri, args.period, at=utc_time(args.at))
    except AmazonExportRejected as e:
        print(e)
        return 2
    return print_json(r.as_dict(), indent=1)


def _cmd_reconcile(args) -> int:
    from returnledger.reconciliation.match import reconcile
    from returnledger.store.db import resolve_dsn

    s = reconcile(
        resolve_dsn(args.dsn),
        args.period,
        as_of=utc_time(args.as_of),
        batch_id=args.batch_id or f"cli:reconcile:{args.period}",
    )
    return print_json(s.as_dict(), indent=1)


def register(subparsers) -> None:
    """``import-amazon-export PERIOD --base-uri ... --at ...`` and ``reconcile PERIOD --as-of ...``."""
    p = subparsers.add_parser(
        "import-amazon-export", help="validate and import a Vendor Central returns export"
    )
    p.add_argument("period", help="YYYY-MM")
    p.add_argument("--base-uri", required=True, help="folder URI holding vendor_central_returns_<period>.csv")
    p.add_argument("--at", required=True, help="ISO timestamp recorded as the import time")
    p.add_argument("--dsn", default=None)
    p.set_defaults(func=_cmd_import)
    p = subparsers.add_parser(
        "reconcile", help="match a period's returns against Amazon (writes recon_result)"
    )
    p.add_argument("period", help="YYYY-MM")
    p.add_argument("--as-of", required=True, help="ISO timestamp: the close run's data interval end")
    p.add_argument("--batch-id", default=None)
    p.add_argument("--dsn", default=None)
    p.set_defaults(func=_cmd_reconcile)
