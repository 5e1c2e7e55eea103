"""``returnledger digest|review-mappings|month-end-report``: the owner teams' digests, the weekly
mapping review, and finance's month-end report."""

from __future__ import annotations

from returnledger.cli.common import login_name, now, print_json, store_path, utc_time


def _cmd_digest(args) -> int:
    from returnledger.exception_queue.stalled import check_stalled_flows
    from returnledger.reports.digests import build_and_write
    from returnledger.store.db import local_dir, resolve_dsn

    as_of = utc_time(args.as_of)
    dsn = resolve_dsn(args.dsn)
    if args.check and args.kind == "daily":
        print_json(check_stalled_flows(dsn, as_of=as_of))
    out_dir = args.out or str(local_dir() / "digests")
    for s in build_and_write(dsn, as_of=as_of, kind=args.kind, out_dir=store_path(out_dir)):
        print(f"{s['path']}: {s['subject']}")
    return 0


def _cmd_review(args) -> int:
    from returnledger.reference.review import MappingReviewError, mark_mappings_reviewed
    from returnledger.store.db import resolve_dsn

    try:
        done = mark_mappings_reviewed(
            resolve_dsn(args.dsn), args.reasons, actor=args.actor or login_name(), at=now(), why=args.why
        )
    except MappingReviewError as exc:
        print(f"refused: {exc}")
        return 2
    print(f"reviewed: {', '.join(done)}")
    return 0


def _cmd_month_end_report(args) -> int:
    from returnledger.reports.finance import write_month_end_report
    from returnledger.store.db import resolve_dsn

    report = write_month_end_report(resolve_dsn(args.dsn), args.period, store_path(args.out))
    return print_json(report, indent=1)


def register(subparsers) -> None:
    """``digest`` (the daily/weekly digests for a date), ``review-mappings``, ``month-end-report``."""
    p = subparsers.add_parser("digest", help="build the owner-team digests for a date into a folder")
    p.add_argument("--kind", choices=["daily", "weekly"], default="daily")
    p.add_argument(
        "--as-of", required=True, help="the run's moment, e.g. 2026-10-10 or 2026-10-10T07:00+00:00"
    )
    p.add_argument("--out", default=None, help="folder (default .local/digests)")
    p.add_argument(
        "--check", action="store_true", help="daily: also raise SYNC_STALLED for stalled flows first"
    )
    p.add_argument("--dsn", default=None)
    p.set_defaults(func=_cmd_digest)
    r = subparsers.add_parser("review-mappings", help="record that reason mappings were reviewed")
    r.add_argument("reasons", nargs="+", help="ReBound reasons")
    r.add_argument("--why", default=None)
    r.add_argument("--actor", default=None)
    r.add_argument("--dsn", default=None)
    r.set_defaults(func=_cmd_review)
    m = subparsers.add_parser(
        "month-end-report", help="write month_end_report.csv/.html for a reconciled period"
    )
    m.add_argument("period", help="YYYY-MM")
    m.add_argument("--out", required=True, help="folder URI (file://..., s3://...) for the two files")
    m.add_argument("--dsn", default=None)
    m.set_defaults(func=_cmd_month_end_report)
