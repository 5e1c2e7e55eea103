"""Builders for hand-made ledger states (plain SQL, real PostgreSQL) used by the reconciliation tests
(no tests here)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from returnledger.store.db import connect

PERIOD = "2026-10"
AS_OF = datetime(2026, 11, 4, tzinfo=UTC)  # close run on 2026-11-03: data interval end
T = datetime(2026, 10, 1, tzinfo=UTC)

CATALOG = {
    "SKU-A": ("B0A0000001", "12.50"),
    "SKU-B": ("B0B0000002", "10.00"),
    "SKU-C": ("B0C0000003", "4.99"),
}
POLICY = {
    "RESTOCKED": 1,
    "REFURBISH": 1,
    "RECYCLE": 1,
    "DESTROY": 1,
    "RETURN_TO_SUPPLIER": 1,
    "QUARANTINED": None,
    "REJECTED": 0,
}


def ts(day: str, hour: int = 12) -> datetime:
    return datetime.fromisoformat(f"{day}T{hour:02d}:00:00+00:00")


class Ledger:
    """Writes ledger rows the way the sync pipeline leaves them."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.conn = connect(dsn, autocommit=True)
        c = self.conn
        for sku, (asin, cost) in CATALOG.items():
            c.execute("INSERT INTO ledger.sku VALUES (%s, %s, %s, 10, %s, 'test')", (sku, asin, cost, T))
        for disposition, fraction in POLICY.items():
            c.execute("INSERT INTO ledger.disposition_policy VALUES (%s, %s)", (disposition, fraction))
        c.execute("INSERT INTO ledger.policy_setting VALUES ('credit_window_days', '7'::jsonb)")

    def close(self):
        self.conn.close()

    def order(
        self,
        rid: str,
        created: str,
        notice: str | None = None,
        *,
        source: str = "REBOUND",
        amazon_return_id: str | None = None,
    ) -> str:
        n = notice or f"RN-{rid}"
        self.conn.execute(
            "INSERT INTO ledger.return_order (return_id, created_at, returns_notice, rma_id, vret, source,"
            " amazon_return_id) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (rid, ts(created, 8), n, f"RMA-{rid}", f"VRET-{rid}", source, amazon_return_id),
        )
        return n

    def line(
        self,
        rid: str,
        line: int,
        sku: str,
        *,
        announced: int = 1,
        received: int | None = None,
        grade: str | None = None,
        disposition: str | None = None,
        dispositioned: str | None = None,
        state: str = "ANNOUNCED",
        reason: str = "FAULTY",
    ):
        self.conn.execute(
            "INSERT INTO ledger.return_line (return_id, line, sku, reason, quantity_announced,"
            " quantity_received, grade, disposition, state, received_at, dispositioned_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                rid,
                line,
                sku,
                reason,
                announced,
                received,
                grade,
                disposition,
                state,
                ts(dispositioned or "2026-10-02", 10) if received is not None else None,
                ts(dispositioned) if dispositioned else None,
            ),
        )

    def credit(
        self,
        rid: str,
        line: int,
        sku: str,
        quantity: int,
        status: str,
        *,
        doc: str | None = None,
        unit: str | None = None,
        error: str | None = None,
    ):
        unit_amount = Decimal(unit or CATALOG[sku][1])
        self.conn.execute(
            "INSERT INTO ledger.credit_note (credit_note_id, return_id, created_at, created_batch,"
            " confirmed_by) VALUES (%s, %s, %s, 'sync-test', %s) ON CONFLICT DO NOTHING",
            (doc or f"CN-{rid}", rid, T, "SUCCESS" if status == "ACCEPTED" else None),
        )
        self.conn.execute(
            "INSERT INTO ledger.amazon_submission (idempotency_key, kind, return_id, line, sku, asin,"
            " quantity, unit_amount, currency, document_id, status, transaction_id, last_error, created_at,"
            " created_batch, submitted_at, resolved_at)"
            " VALUES (%s, 'CREDIT_NOTE', %s, %s, %s, %s, %s, %s, 'GBP', %s, %s, %s, %s, %s,"
            " 'sync-test', %s, %s)",
            (
                f"credit:{rid}:{line}",
                rid,
                line,
                sku,
                CATALOG[sku][0],
                quantity,
                unit_amount,
                doc or f"CN-{rid}",
                status,
                None if status == "PENDING" else f"tx-{rid}-{line}",
                error,
                T,
                None if status == "PENDING" else T,
                T if status in ("ACCEPTED", "FAILED") else None,
            ),
        )

    def amazon(
        self,
        arid: str,
        notice: str,
        sku: str,
        quantity: int,
        *,
        label: str = "REBOUND",
        returned: str = "2026-10-05",
        charged: str | None = None,
        period: str = PERIOD,
        linked: str | None = None,
    ):
        self.conn.execute(
            "INSERT INTO ledger.amazon_return (amazon_return_id, returns_notice, rma_id, vret, asin, sku,"
            " quantity, label, returned_at, charged_amount, source_file, imported_at, export_period,"
            " linked_return_id)"
            " VALUES (%s, %s, %s, NULL, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                arid,
                notice,
                f"RMA-{arid}",
                CATALOG.get(sku, ("",))[0] or None,
                sku,
                quantity,
                label,
                returned,
                charged,
                f"vendor_central_returns_{period}.csv",
                T,
                period,
                linked,
            ),
        )

    def exception(
        self,
        type_: str,
        subject: str,
        *,
        rid: str | None = None,
        line: int | None = None,
        status: str = "open",
        arid: str | None = None,
    ) -> int:
        resolved = None if status == "open" else T
        return self.conn.execute(
            "INSERT INTO ledger.exception (type, owner, status, subject_key, return_id, line,"
            " amazon_return_id, detail, opened_at, opened_by_batch, resolved_at, resolved_by)"
            " VALUES (%s, 'x', %s, %s, %s, %s, %s, 'test', %s, 'sync-test', %s, %s) RETURNING exception_id",
            (type_, status, subject, rid, line, arid, T, resolved, "someone" if resolved else None),
        ).fetchone()[0]

    # --- reading back ---
    def statuses(self, key: str = PERIOD) -> dict[str, str]:
        return dict(
            self.conn.execute(
                "SELECT row_key, recon_status FROM ledger.recon_result WHERE period = %s", (key,)
            ).fetchall()
        )

    def exceptions(self, *types: str) -> list[tuple]:
        return self.conn.execute(
            "SELECT type, subject_key, status FROM ledger.exception WHERE type = ANY(%s)"
            " ORDER BY type, subject_key, exception_id",
            (list(types),),
        ).fetchall()


def build_month(led: Ledger) -> dict[str, str]:
    """One line per recon status (and the traps around them); returns the expected statuses."""
    n = led.order("RB-1", "2026-10-03")
    led.line(
        "RB-1",
        1,
        "SKU-A",
        announced=2,
        received=2,
        grade="A",
        disposition="RESTOCKED",
        dispositioned="2026-10-08",
        state="CLOSED",
    )
    led.credit("RB-1", 1, "SKU-A", 2, "ACCEPTED")
    led.amazon("AR-1-1", n, "SKU-A", 2)

    n = led.order("RB-2", "2026-10-04")  # two SKUs on one notice: one charged wrong, one right
    led.line(
        "RB-2",
        1,
        "SKU-B",
        received=1,
        grade="A",
        disposition="RESTOCKED",
        dispositioned="2026-10-09",
        state="CLOSED",
    )
    led.line(
        "RB-2",
        2,
        "SKU-A",
        announced=2,
        received=2,
        grade="B",
        disposition="REFURBISH",
        dispositioned="2026-10-09",
        state="CLOSED",
    )
    led.credit("RB-2", 1, "SKU-B", 1, "ACCEPTED")
    led.credit("RB-2", 2, "SKU-A", 2, "ACCEPTED")
    led.amazon("AR-2-1", n, "SKU-B", 1, charged="15.00")
    led.amazon("AR-2-2", n, "SKU-A", 2, charged="25.00")

    n = led.order("RB-3", "2026-10-06")  # credit sent, never accepted, window long past
    led.line(
        "RB-3",
        1,
        "SKU-C",
        received=1,
        grade="A",
        disposition="RESTOCKED",
        dispositioned="2026-10-20",
        state="CREDIT_SUBMITTED",
    )
    led.credit("RB-3", 1, "SKU-C", 1, "SUBMITTED")
    led.amazon("AR-3-1", n, "SKU-C", 1)

    n = led.order("RB-4", "2026-10-28")  # late in the month: within the window / not dispositioned
    led.line(
        "RB-4",
        1,
        "SKU-A",
        received=1,
        grade="A",
        disposition="RESTOCKED",
        dispositioned="2026-11-01",
        state="CREDIT_SUBMITTED",
    )
    led.credit("RB-4", 1, "SKU-A", 1, "SUBMITTED")
    led.line("RB-4", 2, "SKU-B", received=1, grade="C", state="GRADED")
    led.amazon("AR-4-1", n, "SKU-A", 1)
    led.amazon("AR-4-2", n, "SKU-B", 1)

    n = led.order("RB-5", "2026-10-07")  # Amazon answered Failure
    led.line(
        "RB-5",
        1,
        "SKU-B",
        received=1,
        grade="A",
        disposition="RESTOCKED",
        dispositioned="2026-10-11",
        state="REJECTED",
    )
    led.credit("RB-5", 1, "SKU-B", 1, "FAILED", error='{"code": "InvalidReturnsReference"}')
    led.amazon("AR-5-1", n, "SKU-B", 1)

    n = led.order("RB-6", "2026-10-08")  # policy: hold, and none owed
    led.line(
        "RB-6",
        1,
        "SKU-A",
        received=1,
        grade="D",
        disposition="QUARANTINED",
        dispositioned="2026-10-12",
        state="DISPOSITIONED",
    )
    led.line(
        "RB-6",
        2,
        "SKU-C",
        received=1,
        grade="D",
        disposition="REJECTED",
        dispositioned="2026-10-12",
        state="REJECTED",
    )
    led.amazon("AR-6-1", n, "SKU-A", 1)
    led.amazon("AR-6-2", n, "SKU-C", 1)

    n = led.order("RB-7", "2026-10-09")  # held by an unmapped reason code
    led.line("RB-7", 1, "SKU-B", received=1, reason="GIFT_UNWANTED", state="RECEIVED")
    led.exception("UNMAPPED_REASON_CODE", "RB-7|1", rid="RB-7", line=1)
    led.amazon("AR-7-1", n, "SKU-B", 1)

    n = led.order("RB-8", "2026-10-10")  # one unit short of what Amazon says; credit follows receipt
    led.line(
        "RB-8",
        1,
        "SKU-C",
        announced=2,
        received=1,
        grade="A",
        disposition="RESTOCKED",
        dispositioned="2026-10-14",
        state="CLOSED",
    )
    led.credit("RB-8", 1, "SKU-C", 1, "ACCEPTED")
    led.amazon("AR-8-1", n, "SKU-C", 2)

    n = led.order("RB-9", "2026-10-02")  # credit earned but never created
    led.line(
        "RB-9",
        1,
        "SKU-A",
        received=1,
        grade="A",
        disposition="RECYCLE",
        dispositioned="2026-10-05",
        state="DISPOSITIONED",
    )
    led.amazon("AR-9-1", n, "SKU-A", 1)

    n = led.order("RB-10", "2026-10-11")  # held by an out-of-sequence event (held_event path)
    led.line("RB-10", 1, "SKU-A", received=1, state="RECEIVED")
    exc = led.exception("OUT_OF_SEQUENCE", "raw:ev-9")  # holds through held_event only
    raw = led.conn.execute(
        "INSERT INTO ledger.raw_event (event_key, event_id, payload, received_at, batch_id)"
        " VALUES ('ev-9', 'ev-9', '{}'::jsonb, %s, 'b') RETURNING raw_id",
        (T,),
    ).fetchone()[0]
    led.conn.execute(
        "INSERT INTO ledger.event_outcome (raw_id, status, batch_id, decided_at)"
        " VALUES (%s, 'HELD', 'b', %s)",
        (raw, T),
    )
    led.conn.execute(
        "INSERT INTO ledger.held_event VALUES (%s, 'RB-10', 1, 'OUT_OF_SEQUENCE', %s, %s)", (raw, exc, T)
    )
    led.amazon("AR-10-1", n, "SKU-A", 1)

    n = led.order("RB-11", "2026-10-12")  # a resolved hold no longer holds
    led.line(
        "RB-11",
        1,
        "SKU-B",
        received=1,
        grade="A",
        disposition="RESTOCKED",
        dispositioned="2026-10-14",
        state="CLOSED",
    )
    led.exception("SKU_MISMATCH", "RB-11|1", rid="RB-11", line=1, status="resolved")
    led.credit("RB-11", 1, "SKU-B", 1, "ACCEPTED")
    led.amazon("AR-11-1", n, "SKU-B", 1, charged="10.00")

    # created in September, its Amazon rows in September's export: no September close settled or reported
    # them, so October's close reports them (scenarios/README.md, "Periods")
    n = led.order("RB-OLD", "2026-09-30")
    led.line(
        "RB-OLD",
        1,
        "SKU-A",
        received=1,
        grade="A",
        disposition="RESTOCKED",
        dispositioned="2026-10-02",
        state="CREDIT_SUBMITTED",
    )
    led.amazon("AR-OLD-1", n, "SKU-A", 1, period="2026-09", returned="2026-09-30")
    led.amazon(
        "AR-OLD-DARK", "RN-SEPT-DARK", "SKU-A", 1, label="APRL", period="2026-09", returned="2026-09-29"
    )

    # dark returns: an APRL label with no ReBound return; one already has its post-hoc record
    led.amazon("AR-APRL-1", "RN-APRL-1", "SKU-B", 1, label="APRL", returned="2026-10-15")
    led.order("RB-PH-2", "2026-10-21", "RN-APRL-2", source="POST_HOC", amazon_return_id="AR-APRL-2")
    led.line("RB-PH-2", 1, "SKU-C", received=1, state="RECEIVED")
    led.amazon("AR-APRL-2", "RN-APRL-2", "SKU-C", 1, label="APRL", returned="2026-10-16", linked="RB-PH-2")
    # right notice, wrong SKU: Amazon's row for SKU-C has no ReBound line
    led.amazon("AR-1-X", "RN-RB-1", "SKU-C", 1, returned="2026-10-05")

    return {
        "RB-1|1": "MATCHED",
        "RB-2|1": "CREDIT_MISMATCH",
        "RB-2|2": "MATCHED",
        "RB-3|1": "CREDIT_MISSING",
        "RB-4|1": "PENDING",
        "RB-4|2": "PENDING",
        "RB-5|1": "CREDIT_REJECTED",
        "RB-6|1": "ON_HOLD",
        "RB-6|2": "NO_CREDIT_DUE",
        "RB-7|1": "QUARANTINED",
        "RB-8|1": "MATCHED",
        "RB-9|1": "CREDIT_MISSING",
        "RB-10|1": "QUARANTINED",
        "RB-11|1": "MATCHED",
        "AR-APRL-1": "DARK_RETURN",
        "AR-APRL-2": "DARK_RETURN",
        "AR-1-X": "DARK_RETURN",
        "RB-OLD|1": "CREDIT_MISSING",
        "AR-OLD-DARK": "DARK_RETURN",
    }
