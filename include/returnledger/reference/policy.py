"""The disposition policy: which grades are sellable, what share of unit cost each disposition owes
Amazon, and how long Amazon has to credit. This is the one place a policy block is read and checked
(seed file, scenario, or the ledger's tables) into a ``Policy``, which the lifecycle applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any

import psycopg
import yaml
from psycopg.types.json import Jsonb

from returnledger.models import Disposition, Grade
from returnledger.store.audit import record


@dataclass(frozen=True)
class Policy:
    """The disposition policy: what is sellable and what share of unit cost each disposition owes Amazon."""

    sellable_grades: frozenset[str]
    credit: Mapping[str, Decimal | None]  # disposition -> fraction; None = hold, 0 = none owed
    credit_window_days: int

    def __post_init__(self) -> None:
        credit = {str(k): (None if v is None else Decimal(str(v))) for k, v in self.credit.items()}
        for disposition, fraction in credit.items():
            if fraction is not None and not (0 <= fraction <= 1):
                raise ValueError(f"credit fraction for {disposition} must be between 0 and 1, got {fraction}")
        if self.credit_window_days <= 0:
            raise ValueError(f"credit_window_days must be positive, got {self.credit_window_days}")
        object.__setattr__(self, "sellable_grades", frozenset(str(g) for g in self.sellable_grades))
        object.__setattr__(self, "credit", MappingProxyType(credit))

    def credit_fraction(self, disposition) -> Decimal | None:
        """Share of unit cost owed; a disposition the policy does not name holds (never guess a credit)."""
        return self.credit.get(str(disposition))

    @classmethod
    def from_dict(cls, data: Mapping) -> Policy:
        """From a scenario's or disposition_policy.yaml's ``policy`` block."""
        return cls(
            sellable_grades=frozenset(data.get("sellable_grades") or ()),
            credit=dict(data.get("credit") or {}),
            credit_window_days=int(data.get("credit_window_days", 7)),
        )


def policy_from_dict(data: Mapping) -> Policy:
    """Validate a policy block (file or scenario): every disposition named, grades known."""
    credit = dict(data.get("credit") or {})
    unknown = set(credit) - {d.value for d in Disposition}
    missing = {d.value for d in Disposition} - set(credit)
    if unknown or missing:
        raise ValueError(
            f"disposition policy: unknown {sorted(unknown)}, missing {sorted(missing)} "
            "(name every disposition; use null to hold, 0 for none owed)"
        )
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


def write_policy(conn: psycopg.Connection, policy: Policy, *, at: datetime, actor: str) -> tuple[int, int]:
    """Upsert the disposition fractions and the policy settings; returns (dispositions, settings) changed."""
    current: dict[str, Decimal | None] = dict(
        conn.execute("SELECT disposition, credit_fraction FROM ledger.disposition_policy")
    )
    changed = _changes(current, sorted(policy.credit.items()))
    if changed:
        conn.execute(
            "INSERT INTO ledger.disposition_policy (disposition, credit_fraction)"
            " SELECT * FROM unnest(%s::text[], %s::numeric[])"
            " ON CONFLICT (disposition) DO UPDATE SET credit_fraction = EXCLUDED.credit_fraction",
            ([c[0] for c in changed], [c[2] for c in changed]),
        )
        record(
            conn,
            [
                ("disposition_policy.set", f"disposition:{d}", {"old": old, "new": new})
                for d, old, new in changed
            ],
            at=at,
            actor=actor,
        )
    settings = {
        "sellable_grades": sorted(policy.sellable_grades),
        "credit_window_days": policy.credit_window_days,
    }
    current_settings: dict[str, Any] = dict(
        conn.execute("SELECT name, value FROM ledger.policy_setting WHERE name = ANY(%s)", (list(settings),))
    )
    changed_settings = _changes(current_settings, settings.items())
    for name, _old, value in changed_settings:
        conn.execute(
            "INSERT INTO ledger.policy_setting (name, value) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            (name, Jsonb(value)),
        )
    record(
        conn,
        [
            ("policy_setting.set", f"setting:{n}", {"old": old, "new": new})
            for n, old, new in changed_settings
        ],
        at=at,
        actor=actor,
    )
    return len(changed), len(changed_settings)


def _changes(current: Mapping[str, Any], wanted: Iterable[tuple[str, Any]]) -> list[tuple[str, Any, Any]]:
    """(name, old, new) of each wanted value that is new or differs from the current one, in order."""
    return [(k, current.get(k), v) for k, v in wanted if k not in current or current[k] != v]


def load_policy(conn: psycopg.Connection) -> Policy:
    """The policy the lifecycle applies; refuses to guess when reference data was never loaded."""
    credit: dict[str, Decimal | None] = dict(
        conn.execute("SELECT disposition, credit_fraction FROM ledger.disposition_policy")
    )
    settings: dict[str, Any] = dict(
        conn.execute(
            "SELECT name, value FROM ledger.policy_setting"
            " WHERE name IN ('sellable_grades', 'credit_window_days')"
        )
    )
    if not credit or len(settings) < 2:
        raise LookupError("disposition policy not loaded: run `returnledger reference load` first")
    return Policy(
        sellable_grades=frozenset(settings["sellable_grades"]),
        credit=credit,
        credit_window_days=int(settings["credit_window_days"]),
    )
