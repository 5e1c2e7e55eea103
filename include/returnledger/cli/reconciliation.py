"""``returnledger import-amazon-export|reconcile|close-month|reopen-period``: bring in Vendor Central's
returns export, match a period's returns against Amazon, close a month (its report stored and final), and
reopen a closed month (an audited Admin action: the old report stays, the next close writes a new
version)."""

from __future__ import annotations

from returnledger.cli.common import login_name, print_json, refusing, store_path, utc_time


def _cmd_import(args) -> int:
    from returnledger.reconciliation.amazon_export import AmazonExportRejected, import_amazon_export
    from returnledger.store.db import resolve_dsn

    try:
        exports = store_path(args.base_uri)
        r = import_amazon_export(resolve_dsn(args.dsn), exports, args.period, at=utc_time(args.at))
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


def _close(dsn: str, period: str, out: str, as_of, batch_id: str) -> dict:
    from returnledger.reconciliation.closes import is_closed
    from returnledger.reconciliation.match import reconcile
    from returnledger.reports.month_close import close_month

    if not is_closed(dsn, period):
        reconcile(dsn, period, as_of=as_of, batch_id=batch_id)
    return close_month(dsn, period, store_path(out), as_of=as_of, batch_id=batch_id)


def _cmd_close(args) -> int:
    from returnledger.store.db import resolve_dsn

    as_of = utc_time(args.as_of)
    batch = args.batch_id or f"cli:close:{args.period}:{as_of:%Y-%m-%dT%H:%M}"
    return print_json(_close(resolve_dsn(args.dsn), args.period, args.out, as_of, batch), indent=1)


def _cmd_reopen(args) -> int:
    from returnledger.reconciliation.closes import reopen
    from returnledger.store.db import resolve_dsn

    dsn = resolve_dsn(args.dsn)
    at = utc_time(args.at)
    old = reopen(dsn, args.period, actor=args.actor or login_name(), reason=args.reason, at=at)
    print(
        f"reopened {args.period} version {old.version} (csv sha256 {old.csv_sha256}); it is kept as written"
    )
    if args.out:
        as_of = utc_time(args.as_of) if args.as_of else at
        batch = f"cli:reopen:{args.period}:{as_of:%Y-%m-%dT%H:%M}"
        return print_json(_close(dsn, args.period, args.out, as_of, batch), indent=1)
    print(
        "the month's next close (a returns_reconciliation close run, or close-month) writes the new version"
    )
    return 0


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
    from returnledger.reconciliation.closes import CloseRefused
    from returnledger.reconciliation.period import PeriodClosed

    p = subparsers.add_parser(
        "close-month", help="close a month: reconcile it, write its report and store it (final)"
    )
    p.add_argument("period", help="YYYY-MM")
    p.add_argument("--out", required=True, help="folder URI the report is written to")
    p.add_argument("--as-of", required=True, help="ISO timestamp: the close's as-of (end of its day)")
    p.add_argument("--batch-id", default=None)
    p.add_argument("--dsn", default=None)
    p.set_defaults(func=refusing(_cmd_close, CloseRefused, PeriodClosed, LookupError, ValueError))
    p = subparsers.add_parser(
        "reopen-period",
        help="reopen a closed month (Admin): its report is kept, the next close writes a new version",
    )
    p.add_argument("period", help="YYYY-MM")
    p.add_argument("--reason", required=True, help="why the month is reopened (audited)")
    p.add_argument("--actor", default=None, help="who reopens it (default: your login name)")
    p.add_argument("--at", default=None, help="when (default: now)")
    p.add_argument("--out", default=None, help="close the month again right away, writing the report here")
    p.add_argument("--as-of", default=None, help="as-of of that new close (default: --at)")
    p.add_argument("--dsn", default=None)
    p.set_defaults(func=refusing(_cmd_reopen, CloseRefused, PeriodClosed, LookupError, ValueError))
