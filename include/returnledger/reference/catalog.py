"""Reference data: the reason-code map, the SKU catalog, the disposition policy
and the exception owners.

They live in the ledger (tables from 0001_ledger.sql) so that the sync, the
reconciliation and the exceptions console read one version of them; the
seed comes from ``include/reference/`` (version controlled) or from a
scenario file. Operators change them through the functions below (CLI or
console), never by hand-edited SQL, so every change lands in
``ledger.audit_log`` and reason-code changes in ``reason_mapping_history``:
finance must be able to say which mapping a credit note was sent under.

Every write takes an explicit ``at`` and ``actor``; nothing here reads the
clock. Loading is an upsert: rows named in the files win, rows that are not
(mappings and SKUs added by operators) are left alone, and reloading the same
files changes nothing.
"""
from __future__ import annotations

import argparse
import csv
import getpass
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path

import psycopg
import yaml
from psycopg.types.json import Jsonb

from returnledger.ledger.lifecycle import Policy
from returnledger.models import Disposition, ExceptionType, Grade
from returnledger.store.db import connect, project_root, resolve_dsn

REASON_CODES_FILE = "reason_codes.csv"
POLICY_FILE = "disposition_policy.yaml"
OWNERS_FILE = "owners.yaml"

#: the same rule as the CHECK on ledger.reason_mapping, checked first for a readable error
AMAZON_REASON_RE = re.compile(r"^(CR-|UNDELIVERABLE_)[A-Z_]+$")

_LOCK_ID = 0x5E7B0E  # advisory lock: one reference writer at a time, so diffs never race


def default_folder() -> Path:
    return project_root() / "include" / "reference"


# --- reading and validating the seed files ------------------------------------------------

@dataclass(frozen=True)
class Owner:
    owner: str
    sla_days: int
    what_to_do: str


def _clean(value, what: str) -> str:
    text = "" if value is None else str(value).strip()
    if not text:
        raise ValueError(f"{what} must not be empty")
    return text


def _check_amazon_reason(amazon_reason: str) -> str:
    code = _clean(amazon_reason, "amazon_reason")
    if not AMAZON_REASON_RE.match(code):
        raise ValueError(f"amazon_reason {code!r} is not an Amazon return reason code "
                         "(expected CR-... or UNDELIVERABLE_..., e.g. CR-DEFECTIVE)")
    return code


def _mapping_rows(rows: Iterable[Mapping]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, row in enumerate(rows, start=1):
        reason = _clean(row.get("rebound_reason"), f"rebound_reason (row {i})")
        code = _check_amazon_reason(row.get("amazon_reason"))
        if reason in out and out[reason] != code:
            raise ValueError(f"rebound_reason {reason} is mapped twice ({out[reason]} and {code})")
        out[reason] = code
    return out


def read_reason_codes(path: Path) -> dict[str, str]:
    """rebound_reason -> amazon_reason from the CSV."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if set(reader.fieldnames or ()) != {"rebound_reason", "amazon_reason"}:
            raise ValueError(f"{path}: header must be rebound_reason,amazon_reason, got {reader.fieldnames}")
        return _mapping_rows(reader)


def policy_from_dict(data: Mapping) -> Policy:
    """Validate a policy block (file or scenario): every disposition named, grades known."""
    credit = dict(data.get("credit") or {})
    unknown = set(credit) - {d.value for d in Disposition}
    missing = {d.value for d in Disposition} - set(credit)
    if unknown or missing:
        raise ValueError(f"disposition policy: unknown {sorted(unknown)}, missing {sorted(missing)} "
                         "(name every disposition; use null to hold, 0 for none owed)")
    grades = list(data.get("sellable_grades") or [])
    bad = [g for g in grades if str(g) not in {g.value for g in Grade}]
    if bad or not grades:
        raise ValueError(f"sellable_grades must be a non-empty list of A-D, got {grades}")
    for d, v in credit.items():
        if isinstance(v, bool) or not (v is None or isinstance(v, (int, float, str, Decimal))):
            raise ValueError(f"credit fraction for {d} must be a number or null, got {v!r}")
        if isinstance(v, str):
            try:
                Decimal(v)
            except InvalidOperation:
                raise ValueError(f"credit fraction for {d} must be a number or null, got {v!r}") from None
    return Policy.from_dict({**data, "credit": credit})


def read_policy(path: Path) -> Policy:
    with open(path) as f:
        return policy_from_dict(yaml.safe_load(f) or {})


def owners_from_dict(data: Mapping) -> dict[str, Owner]:
    unknown = set(data) - {t.value for t in ExceptionType}
    missing = {t.value for t in ExceptionType} - set(data)
    if unknown or missing:
        raise ValueError(f"owners: unknown exception types {sorted(unknown)}, missing {sorted(missing)}")
    out = {}
    for type_, entry in data.items():
        sla = entry.get("sla_days")
        if isinstance(sla, bool) or not isinstance(sla, int) or sla <= 0:
            raise ValueError(f"owners: {type_}.sla_days must be a positive whole number of days, got {sla!r}")
        out[type_] = Owner(owner=_clean(entry.get("owner"), f"{type_}.owner"), sla_days=sla,
                           what_to_do=str(entry.get("what_to_do") or "").strip())
    return out


def read_owners(path: Path) -> dict[str, Owner]:
    with open(path) as f:
        return owners_from_dict(yaml.safe_load(f) or {})


@dataclass(frozen=True)
class SkuEntry:
    sku: str
    asin: str
    unit_cost: Decimal
    available: int


def sku_entry(sku, asin, unit_cost, available) -> SkuEntry:
    """A validated catalog entry (clear errors before the database's CHECKs)."""
    sku = _clean(sku, "sku")
    asin = _clean(asin, f"asin of {sku}")
    try:
        cost = Decimal(str(unit_cost).strip())
    except InvalidOperation:
        raise ValueError(f"unit_cost of {sku} must be a decimal amount, got {unit_cost!r}") from None
    if not cost.is_finite() or cost < 0:
        raise ValueError(f"unit_cost of {sku} must be >= 0, got {unit_cost!r}")
    if cost != cost.quantize(Decimal("0.01")):
        raise ValueError(f"unit_cost of {sku} has more than two decimals: {unit_cost!r}")
    try:
        stock = int(str(available).strip())
    except ValueError:
        raise ValueError(f"available of {sku} must be a whole number, got {available!r}") from None
    if stock < 0:
        raise ValueError(f"available of {sku} must be >= 0, got {available!r}")
    return SkuEntry(sku, asin, cost.quantize(Decimal("0.01")), stock)


# --- writing -------------------------------------------------------------------------

@contextmanager
def _unit_of_work(dsn_or_conn) -> Iterator[psycopg.Connection]:
    """A transaction (or a savepoint in the caller's) holding the reference-writer lock."""
    if isinstance(dsn_or_conn, psycopg.Connection):
        with dsn_or_conn.transaction():
            dsn_or_conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            yield dsn_or_conn
    else:
        with connect(dsn_or_conn) as conn:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
                yield conn


def _json(value) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def _audit(conn: psycopg.Connection, entries: list[tuple[str, str, dict]], *, at: datetime, actor: str) -> None:
    if not entries:
        return
    conn.execute(
        "INSERT INTO ledger.audit_log (at, actor, action, subject, detail)"
        " SELECT %(at)s, %(actor)s, x.action, x.subject, x.detail::jsonb"
        " FROM unnest(%(action)s::text[], %(subject)s::text[], %(detail)s::text[]) AS x(action, subject, detail)",
        {"at": at, "actor": actor, "action": [e[0] for e in entries], "subject": [e[1] for e in entries],
         "detail": [_json(e[2]) for e in entries]},
    )


def _write_mappings(conn: psycopg.Connection, wanted: dict[str, tuple[str | None, bool]], *, at: datetime,
                    actor: str, why: str | None) -> int:
    """Bring mappings to (amazon_reason, active); history and audit only for real changes."""
    if not wanted:
        return 0
    current = {r: (a, act) for r, a, act in conn.execute(
        "SELECT rebound_reason, amazon_reason, active FROM ledger.reason_mapping"
        " WHERE rebound_reason = ANY(%s)", (list(wanted),))}
    changes = []  # (reason, old_code, new_code, old_active, new_active)
    for reason, (code, active) in wanted.items():
        old_code, old_active = current.get(reason, (None, None))
        new_code = code if code is not None else old_code
        if new_code is None:
            raise LookupError(f"no reason-code mapping for {reason}")
        if (old_code, old_active) != (new_code, active):
            changes.append((reason, old_code, new_code, old_active, active))
    if not changes:
        return 0
    cols = {"reason": [c[0] for c in changes], "old_code": [c[1] for c in changes],
            "new_code": [c[2] for c in changes], "old_active": [c[3] for c in changes],
            "new_active": [c[4] for c in changes], "at": at, "actor": actor, "why": why}
    conn.execute(
        "INSERT INTO ledger.reason_mapping (rebound_reason, amazon_reason, active, updated_at, updated_by)"
        " SELECT x.r, x.c, x.a, %(at)s, %(actor)s FROM unnest(%(reason)s::text[], %(new_code)s::text[],"
        " %(new_active)s::bool[]) AS x(r, c, a)"
        " ON CONFLICT (rebound_reason) DO UPDATE SET amazon_reason = EXCLUDED.amazon_reason,"
        " active = EXCLUDED.active, updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by",
        cols)
    conn.execute(
        "INSERT INTO ledger.reason_mapping_history (rebound_reason, old_amazon_reason, new_amazon_reason,"
        " old_active, new_active, changed_at, changed_by, why)"
        " SELECT x.r, x.oc, x.nc, x.oa, x.na, %(at)s, %(actor)s, %(why)s"
        " FROM unnest(%(reason)s::text[], %(old_code)s::text[], %(new_code)s::text[], %(old_active)s::bool[],"
        " %(new_active)s::bool[]) AS x(r, oc, nc, oa, na)",
        cols)
    _audit(conn, [("reason_mapping.deactivate" if not c[4] else "reason_mapping.set", f"reason:{c[0]}",
                   {"old": {"amazon_reason": c[1], "active": c[3]}, "new": {"amazon_reason": c[2], "active": c[4]},
                    **({"why": why} if why else {})}) for c in changes], at=at, actor=actor)
    return len(changes)


def _write_policy(conn: psycopg.Connection, policy: Policy, *, at: datetime, actor: str) -> tuple[int, int]:
    """Upsert the disposition fractions and the policy settings; returns (dispositions, settings) changed."""
    current = dict(conn.execute("SELECT disposition, credit_fraction FROM ledger.disposition_policy"))
    changed = [(d, current.get(d), f) for d, f in sorted(policy.credit.items())
               if d not in current or current[d] != f]
    if changed:
        conn.execute(
            "INSERT INTO ledger.disposition_policy (disposition, credit_fraction)"
            " SELECT * FROM unnest(%s::text[], %s::numeric[])"
            " ON CONFLICT (disposition) DO UPDATE SET credit_fraction = EXCLUDED.credit_fraction",
            ([c[0] for c in changed], [c[2] for c in changed]))
        _audit(conn, [("disposition_policy.set", f"disposition:{d}", {"old": old, "new": new})
                      for d, old, new in changed], at=at, actor=actor)
    settings = {"sellable_grades": sorted(policy.sellable_grades), "credit_window_days": policy.credit_window_days}
    current_settings = dict(conn.execute("SELECT name, value FROM ledger.policy_setting WHERE name = ANY(%s)",
                                         (list(settings),)))
    changed_settings = [(n, current_settings.get(n), v) for n, v in settings.items()
                        if n not in current_settings or current_settings[n] != v]
    for name, _old, value in changed_settings:
        conn.execute("INSERT INTO ledger.policy_setting (name, value) VALUES (%s, %s)"
                     " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value", (name, Jsonb(value)))
    _audit(conn, [("policy_setting.set", f"setting:{n}", {"old": old, "new": new})
                  for n, old, new in changed_settings], at=at, actor=actor)
    return len(changed), len(changed_settings)


def _write_owners(conn: psycopg.Connection, owners: Mapping[str, Owner], *, at: datetime, actor: str) -> int:
    current = {t: Owner(o, s, w) for t, o, s, w in conn.execute(
        "SELECT exception_type, owner, sla_days, what_to_do FROM ledger.owner_team")}
    changed = [(t, current.get(t), o) for t, o in sorted(owners.items()) if current.get(t) != o]
    if not changed:
        return 0
    conn.execute(
        "INSERT INTO ledger.owner_team (exception_type, owner, sla_days, what_to_do)"
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::text[])"
        " ON CONFLICT (exception_type) DO UPDATE SET owner = EXCLUDED.owner, sla_days = EXCLUDED.sla_days,"
        " what_to_do = EXCLUDED.what_to_do",
        ([c[0] for c in changed], [c[2].owner for c in changed], [c[2].sla_days for c in changed],
         [c[2].what_to_do for c in changed]))
    _audit(conn, [("owner_team.set", f"owner:{t}", {"old": asdict(old) if old else None, "new": asdict(new)})
                  for t, old, new in changed], at=at, actor=actor)
    return len(changed)


def _write_skus(conn: psycopg.Connection, entries: Iterable[SkuEntry], *, at: datetime, actor: str,
                reset_stock: bool = False) -> int:
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
    current = {s: SkuEntry(s, a, c, n) for s, a, c, n in conn.execute(
        "SELECT sku, asin, unit_cost, available FROM ledger.sku WHERE sku = ANY(%s)", (list(wanted),))}
    rows, audit = [], []
    for sku, new in wanted.items():
        old = current.get(sku)
        if old is not None and not reset_stock:
            new = SkuEntry(sku, new.asin, new.unit_cost, old.available)
        if old == new:
            continue
        rows.append(new)
        audit.append(("sku.add" if old is None else "sku.change", f"sku:{sku}",
                      {"old": None if old is None else {"asin": old.asin, "unit_cost": old.unit_cost,
                                                        "available": old.available},
                       "new": {"asin": new.asin, "unit_cost": new.unit_cost, "available": new.available}}))
    if not rows:
        return 0
    conn.execute(
        "INSERT INTO ledger.sku (sku, asin, unit_cost, available, updated_at, updated_by)"
        " SELECT x.s, x.a, x.c, x.n, %(at)s, %(actor)s"
        " FROM unnest(%(sku)s::text[], %(asin)s::text[], %(cost)s::numeric[], %(n)s::int[]) AS x(s, a, c, n)"
        " ON CONFLICT (sku) DO UPDATE SET asin = EXCLUDED.asin, unit_cost = EXCLUDED.unit_cost,"
        " available = EXCLUDED.available, updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by",
        {"sku": [r.sku for r in rows], "asin": [r.asin for r in rows], "cost": [r.unit_cost for r in rows],
         "n": [r.available for r in rows], "at": at, "actor": actor})
    _audit(conn, audit, at=at, actor=actor)
    return len(rows)


# --- public API ------------------------------------------------------------------------

def load_reference(dsn, folder: Path | None = None, *, at: datetime, actor: str = "reference-loader") -> dict:
    """Upsert the seed files into the ledger; returns how many rows of each kind changed.

    All files are read and validated before anything is written, in one transaction.
    """
    folder = Path(folder) if folder else default_folder()
    mappings = read_reason_codes(folder / REASON_CODES_FILE)
    policy = read_policy(folder / POLICY_FILE)
    owners = read_owners(folder / OWNERS_FILE)
    with _unit_of_work(dsn) as conn:
        n_map = _write_mappings(conn, {r: (c, True) for r, c in mappings.items()}, at=at, actor=actor,
                                why=f"loaded from {REASON_CODES_FILE}")
        n_disp, n_set = _write_policy(conn, policy, at=at, actor=actor)
        n_own = _write_owners(conn, owners, at=at, actor=actor)
    return {"reason_mappings": n_map, "disposition_policy": n_disp, "policy_settings": n_set,
            "owner_teams": n_own}


def load_scenario_reference(dsn, scenario: Mapping, *, at: datetime, actor: str = "scenario",
                            owners_folder: Path | None = None, reset_stock: bool = False) -> dict:
    """The same from a scenario's ``policy``, ``reason_codes`` and ``catalog``.

    Scenarios carry no owners, so the owner teams come from owners.yaml (configuration, not data).
    """
    policy = policy_from_dict(scenario["policy"])
    mappings = _mapping_rows(scenario.get("reason_codes") or [])
    catalog = [sku_entry(c.get("sku"), c.get("asin"), c.get("unit_cost"), c.get("available"))
               for c in scenario.get("catalog") or []]
    owners = read_owners(Path(owners_folder or default_folder()) / OWNERS_FILE)
    with _unit_of_work(dsn) as conn:
        n_map = _write_mappings(conn, {r: (c, True) for r, c in mappings.items()}, at=at, actor=actor,
                                why=f"scenario {scenario.get('name', '')}".strip())
        n_disp, n_set = _write_policy(conn, policy, at=at, actor=actor)
        n_own = _write_owners(conn, owners, at=at, actor=actor)
        n_sku = _write_skus(conn, catalog, at=at, actor=actor, reset_stock=reset_stock)
    return {"reason_mappings": n_map, "disposition_policy": n_disp, "policy_settings": n_set,
            "owner_teams": n_own, "skus": n_sku}


def add_reason_mapping(dsn_or_conn, rebound_reason: str, amazon_reason: str, *, at: datetime, actor: str,
                       why: str | None = None) -> bool:
    """Map (or remap, or reactivate) a ReBound reason; True when something changed.

    Lines held for this reason are released by the next sync run (design.md rule 6).
    """
    reason = _clean(rebound_reason, "rebound_reason")
    code = _check_amazon_reason(amazon_reason)
    actor = _clean(actor, "actor")
    with _unit_of_work(dsn_or_conn) as conn:
        return _write_mappings(conn, {reason: (code, True)}, at=at, actor=actor, why=why) > 0


def deactivate_reason_mapping(dsn_or_conn, rebound_reason: str, *, at: datetime, actor: str,
                              why: str | None = None) -> bool:
    """Stop using a mapping (kept for history); new lines with that reason are quarantined again."""
    reason = _clean(rebound_reason, "rebound_reason")
    actor = _clean(actor, "actor")
    with _unit_of_work(dsn_or_conn) as conn:
        return _write_mappings(conn, {reason: (None, False)}, at=at, actor=actor, why=why) > 0


def add_sku(dsn_or_conn, sku: str, asin: str, unit_cost, available, *, at: datetime, actor: str,
            reset_stock: bool = False) -> bool:
    """Add a SKU to the catalog (or correct its ASIN / unit cost); True when something changed."""
    entry = sku_entry(sku, asin, unit_cost, available)
    actor = _clean(actor, "actor")
    with _unit_of_work(dsn_or_conn) as conn:
        return _write_skus(conn, [entry], at=at, actor=actor, reset_stock=reset_stock) > 0


def apply_operation(dsn_or_conn, op: Mapping, *, at: datetime, actor: str = "scenario") -> bool:
    """Apply one of a scenario's ``operations`` (what people do by hand) through the operator actions."""
    action = op.get("action")
    if action == "add_reason_mapping":
        return add_reason_mapping(dsn_or_conn, op["rebound_reason"], op["amazon_reason"], at=at, actor=actor,
                                  why=op.get("why"))
    if action == "add_sku":
        return add_sku(dsn_or_conn, op["sku"], op["asin"], op["unit_cost"], op["available"], at=at, actor=actor)
    raise ValueError(f"unknown operation {action!r}")


def load_policy(conn: psycopg.Connection) -> Policy:
    """The policy the lifecycle applies; refuses to guess when reference data was never loaded."""
    credit = dict(conn.execute("SELECT disposition, credit_fraction FROM ledger.disposition_policy"))
    settings = dict(conn.execute("SELECT name, value FROM ledger.policy_setting"
                                 " WHERE name IN ('sellable_grades', 'credit_window_days')"))
    if not credit or len(settings) < 2:
        raise LookupError("disposition policy not loaded: run `returnledger reference load` first")
    return Policy(sellable_grades=frozenset(settings["sellable_grades"]), credit=credit,
                  credit_window_days=int(settings["credit_window_days"]))


def active_mappings(conn: psycopg.Connection) -> dict[str, str]:
    """rebound_reason -> amazon_reason for the mappings in use."""
    return dict(conn.execute("SELECT rebound_reason, amazon_reason FROM ledger.reason_mapping WHERE active"))


def owner_teams(conn: psycopg.Connection) -> dict[str, Owner]:
    """exception type -> owner team, SLA and first step (what the console and digests show)."""
    return {t: Owner(o, s, w) for t, o, s, w in conn.execute(
        "SELECT exception_type, owner, sla_days, what_to_do FROM ledger.owner_team")}


# --- CLI -------------------------------------------------------------------------------

def _at(text: str | None) -> datetime:
    # An operator action happens when the operator runs it, so the CLI (and only the CLI) stamps it
    # with the current time; everything below takes `at` explicitly and never reads the clock.
    if not text:
        return datetime.now(timezone.utc)
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "cli"


def _print(result) -> int:
    print(json.dumps(result, default=str, sort_keys=True))
    return 0


def _refusing(fn):
    """A bad operator input is a refusal with a readable message (exit 2), not a traceback."""
    def run(args) -> int:
        try:
            return fn(args)
        except (ValueError, LookupError) as exc:
            print(f"refused: {exc}")
            return 2
    return run


def _cmd_reference_load(args) -> int:
    return _print(load_reference(resolve_dsn(), args.folder, at=_at(args.at), actor=args.actor))


def _cmd_mapping_add(args) -> int:
    changed = add_reason_mapping(resolve_dsn(), args.rebound_reason, args.amazon_reason, at=_at(args.at),
                                 actor=args.actor, why=args.why)
    return _print({"rebound_reason": args.rebound_reason, "amazon_reason": args.amazon_reason,
                   "changed": changed})


def _cmd_mapping_deactivate(args) -> int:
    changed = deactivate_reason_mapping(resolve_dsn(), args.rebound_reason, at=_at(args.at), actor=args.actor,
                                        why=args.why)
    return _print({"rebound_reason": args.rebound_reason, "active": False, "changed": changed})


def _cmd_sku_add(args) -> int:
    changed = add_sku(resolve_dsn(), args.sku, args.asin, args.unit_cost, args.available, at=_at(args.at),
                      actor=args.actor)
    return _print({"sku": args.sku, "changed": changed})


def register_cli(subparsers) -> None:
    """Add `reference load`, `mapping add|deactivate` and `sku add` to the returnledger CLI."""
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--actor", default=_default_actor(), help="who makes the change (audit log)")
        p.add_argument("--at", default=None, help="ISO timestamp of the change (default: now)")

    ref = subparsers.add_parser("reference", help="reference data (reason codes, policy, owners)")
    ref_sub = ref.add_subparsers(dest="reference_command", required=True)
    p = ref_sub.add_parser("load", help="upsert include/reference/ into the ledger (idempotent)")
    p.add_argument("--folder", type=Path, default=None, help="folder with the seed files")
    common(p)
    p.set_defaults(func=_refusing(_cmd_reference_load), actor="reference-loader")

    mapping = subparsers.add_parser("mapping", help="ReBound -> Amazon reason-code map")
    map_sub = mapping.add_subparsers(dest="mapping_command", required=True)
    p = map_sub.add_parser("add", help="map a ReBound reason to an Amazon CR- code (releases held lines)")
    p.add_argument("rebound_reason")
    p.add_argument("amazon_reason")
    p.add_argument("--why", default=None, help="reason for the change (kept in the mapping history)")
    common(p)
    p.set_defaults(func=_refusing(_cmd_mapping_add))
    p = map_sub.add_parser("deactivate", help="stop using a mapping (kept in history)")
    p.add_argument("rebound_reason")
    p.add_argument("--why", default=None)
    common(p)
    p.set_defaults(func=_refusing(_cmd_mapping_deactivate))

    sku = subparsers.add_parser("sku", help="SKU catalog")
    sku_sub = sku.add_subparsers(dest="sku_command", required=True)
    p = sku_sub.add_parser("add", help="add a SKU (releases lines held for it)")
    p.add_argument("sku")
    p.add_argument("asin")
    p.add_argument("unit_cost", help="decimal, e.g. 15.00")
    p.add_argument("available", type=int, help="starting available stock at the warehouse")
    common(p)
    p.set_defaults(func=_refusing(_cmd_sku_add))


__all__ = ["load_reference", "load_scenario_reference", "add_reason_mapping", "deactivate_reason_mapping",
           "add_sku", "apply_operation", "load_policy", "active_mappings", "owner_teams", "register_cli",
           "read_reason_codes", "read_policy", "read_owners", "policy_from_dict", "Owner", "default_folder"]
