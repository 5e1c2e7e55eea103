"""Reviews of the reason-code map: operations confirm a mapping is still right, which takes it off the
weekly review's 'not reviewed' list."""

from __future__ import annotations

from datetime import datetime

from returnledger.store import audit
from returnledger.store.db import unit_of_work


class MappingReviewError(ValueError):
    """A review that cannot be recorded: no reason named, an unknown or inactive one, no reviewer."""


def _required(value: str | None, what: str) -> str:
    if value is None or not str(value).strip():
        raise MappingReviewError(f"{what} must not be empty")
    return str(value).strip()


def mark_mappings_reviewed(
    dsn_or_conn, rebound_reasons: list[str], *, actor: str, at: datetime, why: str | None = None
) -> list[str]:
    """Record that operations reviewed these reason mappings; returns the reasons marked.

    Unknown or inactive reasons are refused and nothing is recorded.
    """
    actor = _required(actor, "actor")
    reasons = sorted({_required(r, "rebound_reason") for r in rebound_reasons})
    if not reasons:
        raise MappingReviewError("name at least one ReBound reason")
    with unit_of_work(dsn_or_conn) as conn:
        done = conn.execute(
            "UPDATE ledger.reason_mapping SET reviewed_at = %s WHERE active AND rebound_reason = ANY(%s)"
            " RETURNING rebound_reason, amazon_reason",
            (at, reasons),
        ).fetchall()
        missing = sorted(set(reasons) - {r[0] for r in done})
        if missing:
            raise MappingReviewError(f"no active reason mapping for {', '.join(missing)}")
        audit.record(
            conn,
            [
                (
                    "reason_mapping.review",
                    f"reason:{reason}",
                    {"amazon_reason": amazon_reason, **({"why": why} if why else {})},
                )
                for reason, amazon_reason in done
            ],
            at=at,
            actor=actor,
        )
    return [r[0] for r in done]
