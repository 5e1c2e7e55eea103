"""How long each kind of exception may stay open: the one SLA definition the queue listing and the
digests share.

The SLA of a type is ``ledger.owner_team.sla_days`` (loaded from include/reference/owners.yaml); until
that table is loaded, the same file read directly supplies it, so there is one source of the numbers.
"""

from __future__ import annotations

from typing import Any

from returnledger.reference.owners import default_owners

#: ``sla(type, sla_days, what_to_do)``: one row per exception type, for a ``WITH`` clause; takes the
#: parameters of ``sla_params()``
SLA_CTE = """sla AS (
    SELECT d.type, COALESCE(o.sla_days, d.sla_days) AS sla_days, o.what_to_do
    FROM unnest(%(sla_types)s::text[], %(sla_default_days)s::int[]) AS d(type, sla_days)
    LEFT JOIN ledger.owner_team o ON o.exception_type = d.type
)"""


def sla_params() -> dict[str, Any]:
    """The query parameters ``SLA_CTE`` needs: every exception type with its owners.yaml SLA."""
    defaults = default_owners()
    return {"sla_types": list(defaults), "sla_default_days": [o.sla_days for o in defaults.values()]}


def overdue_sql(column: str, at: str) -> str:
    """SQL that is true when the exception in ``column`` (a ``ledger.exception`` alias joined to ``sla``)
    is past its SLA at the SQL time ``at``."""
    return f"({at} > {column}.opened_at + make_interval(days => sla.sla_days))"
