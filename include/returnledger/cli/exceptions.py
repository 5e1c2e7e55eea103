"""``returnledger exceptions list|show|resolve|dismiss|retry|map|sku|credit|pick``: work the exception
queue."""

from __future__ import annotations

import json

from returnledger.cli.common import login_name, now
from returnledger.exception_types import ACTIONS, all_codes, offering
from returnledger.models import ExceptionStatus


def _dsn(args) -> str:
    from returnledger.store.db import resolve_dsn

    return resolve_dsn(getattr(args, "dsn", None))


def _cmd_list(args) -> int:
    from returnledger.exception_queue.queries import list_exceptions
    from returnledger.store.db import connect

    with connect(_dsn(args)) as conn:
        rows = list_exceptions(
            conn,
            owner=args.owner,
            type=args.type,
            status=args.status,
            min_age_days=args.min_age,
            as_of=now(),
            limit=args.limit,
        )
    print(f"{'id':>6}  {'type':<22} {'owner':<12} {'status':<9} {'age':>4} {'sla':<4} subject / detail")
    for r in rows:
        late = "LATE" if r["sla_breached"] and r["status"] == "open" else ""
        print(
            f"{r['exception_id']:>6}  {r['type']:<22} {r['owner']:<12} {r['status']:<9} {r['age_days']:>4}"
            f" {late:<4} {r['subject_key']}: {r['detail']}"
        )
    print(f"{len(rows)} exception(s)")
    return 0


def _cmd_action(args) -> int:
    from returnledger.exception_queue import actions, retry
    from returnledger.exception_queue.queue import ExceptionActionError, ExceptionNotFound

    dsn, actor, at = _dsn(args), args.actor or login_name(), now()
    try:
        if args.action == "resolve":
            out = actions.resolve_exception(dsn, args.id, actor=actor, resolution=args.why, at=at)
        elif args.action == "dismiss":
            out = actions.dismiss_exception(dsn, args.id, actor=actor, reason=args.why, at=at)
        elif args.action == "retry":
            out = retry.retry_submission(dsn, args.id, actor=actor, at=at)
        elif args.action == "map":
            out = actions.resolve_with_mapping(dsn, args.id, args.amazon_reason, actor=actor, at=at)
        elif args.action == "sku":
            out = actions.resolve_with_sku(
                dsn, args.id, args.asin, args.unit_cost, args.available, actor=actor, at=at
            )
        elif args.action == "credit":
            out = actions.resolve_over_receipt(
                dsn, args.id, args.quantity, actor=actor, at=at, note=args.note
            )
        elif args.action == "pick":
            out = actions.pick_event_body(dsn, args.id, args.raw_id, actor=actor, at=at, why=args.why)
        else:  # pragma: no cover - argparse restricts the choices
            raise SystemExit(f"unknown action {args.action}")
    except (ExceptionNotFound, ExceptionActionError) as exc:
        print(f"refused: {exc}")
        return 2
    print(f"exception {out['exception_id']} {out['status']} by {out['resolved_by']}: {out['resolution']}")
    return 0


def _cmd_show(args) -> int:
    from returnledger.exception_queue.queries import exception_detail
    from returnledger.exception_queue.queue import ExceptionNotFound
    from returnledger.store.db import connect

    with connect(_dsn(args)) as conn:
        try:
            d = exception_detail(conn, args.id)
        except ExceptionNotFound as exc:
            print(str(exc))
            return 2
    print(json.dumps(d, default=str, indent=2))
    return 0


def _help(action: str) -> str:
    """An action's help, with the types it applies to (the exception-type registry's)."""
    types, others = offering(action), sorted(set(all_codes()) - offering(action))
    on = (
        " / ".join(sorted(types))
        if len(types) <= len(others)
        else "any type" + (f" but {' / '.join(others)}" if others else "")
    )
    return f"{on}: {ACTIONS[action]}"


def register(subparsers) -> None:
    """``returnledger exceptions list|show|resolve|dismiss|retry|map|sku|credit|pick``."""
    p = subparsers.add_parser("exceptions", help="work the exception queue")
    sub = p.add_subparsers(dest="exceptions_command", required=True)

    def common(sp):
        sp.add_argument("--dsn", default=None, help="ledger DSN (default: RETURNLEDGER_DSN or embedded)")
        sp.add_argument("--actor", default=None, help="who acts (default: the login name)")

    ls = sub.add_parser("list", help="list exceptions, open and oldest first")
    common(ls)
    ls.add_argument("--owner")
    ls.add_argument("--type", choices=sorted(all_codes()))
    ls.add_argument("--status", choices=[s.value for s in ExceptionStatus])
    ls.add_argument("--min-age", type=int, default=None, help="only exceptions at least this many days old")
    ls.add_argument("--limit", type=int, default=500)
    ls.set_defaults(func=_cmd_list)

    show = sub.add_parser("show", help="one exception with its line, history and raw payloads (JSON)")
    common(show)
    show.add_argument("id", type=int)
    show.set_defaults(func=_cmd_show)

    for name in ("resolve", "dismiss"):
        sp = sub.add_parser(name, help=_help(name))
        common(sp)
        sp.add_argument("id", type=int)
        sp.add_argument("--why", required=True, help="what was done, or why nothing is needed")
        sp.set_defaults(func=_cmd_action, action=name)

    rt = sub.add_parser("retry", help=_help("retry"))
    common(rt)
    rt.add_argument("id", type=int)
    rt.set_defaults(func=_cmd_action, action="retry")

    mp = sub.add_parser("map", help=_help("map"))
    common(mp)
    mp.add_argument("id", type=int)
    mp.add_argument("amazon_reason", help="Amazon reason code, e.g. CR-UNWANTED_ITEM")
    mp.set_defaults(func=_cmd_action, action="map")

    sk = sub.add_parser("sku", help=_help("sku"))
    common(sk)
    sk.add_argument("id", type=int)
    sk.add_argument("asin")
    sk.add_argument("unit_cost")
    sk.add_argument("available", type=int)
    sk.set_defaults(func=_cmd_action, action="sku")

    cr = sub.add_parser("credit", help=_help("credit"))
    common(cr)
    cr.add_argument("id", type=int)
    cr.add_argument("quantity", type=int, help="units to credit, from 0 to the units received")
    cr.add_argument("--note", default="", help="why this quantity (e.g. 2 units were another vendor's)")
    cr.set_defaults(func=_cmd_action, action="credit")

    pk = sub.add_parser("pick", help=_help("pick"))
    common(pk)
    pk.add_argument("id", type=int)
    pk.add_argument("raw_id", type=int, help="raw id of the body that is right (see `exceptions show`)")
    pk.add_argument("--why", default=None, help="how you know (e.g. the ReBound ticket)")
    pk.set_defaults(func=_cmd_action, action="pick")
