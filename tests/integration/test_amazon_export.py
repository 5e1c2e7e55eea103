"""Vendor Central returns export: the GX gate rejects bad files whole; imports are all-or-nothing and
idempotent."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from returnledger.reconciliation.amazon_export import COLUMNS, AmazonExportRejected, import_amazon_export
from returnledger.store.db import connect

pytestmark = pytest.mark.integration

AT = datetime(2026, 11, 4, tzinfo=UTC)
NAME = "vendor_central_returns_2026-10.csv"
GOOD = [
    ["AR-1", "RN0001", "RMA0001", "VRET0001", "B000000001", "SKU-A", "2", "REBOUND", "2026-10-03", ""],
    ["AR-2", "RN0002", "RMA0002", "VRET0002", "B000000002", "SKU-B", "1", "REBOUND", "2026-10-04", "12.50"],
    ["AR-APRL-1", "RNAPRL01", "RMAAPRL01", "", "B000000003", "SKU-C", "1", "APRL", "2026-10-09", ""],
]


def write(folder, rows, header=COLUMNS, name=NAME):
    lines = [",".join(header)] + [",".join(r) for r in rows]
    (folder / name).write_text("\n".join(lines) + "\n")
    return f"file://{folder}"


def snapshot(dsn):
    with connect(dsn) as c:
        return (
            c.execute("SELECT * FROM ledger.amazon_return ORDER BY 1").fetchall(),
            c.execute("SELECT * FROM ledger.import_file ORDER BY 1").fetchall(),
        )


def test_good_file_imports_and_reimport_changes_nothing(fresh_db, tmp_path):
    base = write(tmp_path, GOOD)
    r = import_amazon_export(fresh_db, base, "2026-10", at=AT)
    assert (r.status, r.rows, r.inserted, r.source_file) == ("IMPORTED", 3, 3, NAME)
    before = snapshot(fresh_db)
    rows = {row[0]: row for row in before[0]}
    assert rows["AR-APRL-1"][3] is None  # empty VRET is NULL, not ''
    assert str(rows["AR-2"][9]) == "12.50" and rows["AR-1"][9] is None
    assert before[1][0][2] == 3
    again = import_amazon_export(fresh_db, base, "2026-10", at=datetime(2026, 11, 5, tzinfo=UTC))
    assert again.status == "UNCHANGED"
    assert snapshot(fresh_db) == before


def test_plain_path_and_missing_file(fresh_db, tmp_path):
    write(tmp_path, GOOD)
    assert import_amazon_export(fresh_db, str(tmp_path), "2026-10", at=AT).inserted == 3
    assert (
        import_amazon_export(fresh_db, str(tmp_path), "2026-11", at=AT, missing_ok=True).status == "MISSING"
    )
    with pytest.raises(FileNotFoundError, match=r"vendor_central_returns_2026-11.csv"):
        import_amazon_export(fresh_db, str(tmp_path), "2026-11", at=AT)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (
            lambda rows, hdr: (rows, [c if c != "charged_amount" else "charge" for c in hdr]),
            [
                f"{NAME} line 1, column charged_amount: missing column(s): charged_amount",
                f"{NAME} line 1, column charge: unexpected column(s): charge",
            ],
        ),
        (
            lambda rows, hdr: ([*rows[:1], [*rows[1][:9], "12,50x"], *rows[2:]], hdr),
            None,
        ),  # comma splits the cell: row has too many cells
        (
            lambda rows, hdr: ([*rows[:1], [*rows[1][:9], "12.5x"], *rows[2:]], hdr),
            [f"{NAME} line 3, column charged_amount: charged_amount '12.5x' is not an amount"],
        ),
        (
            lambda rows, hdr: ([*rows, [*rows[0][:1], "RN0009", *rows[0][2:]]], hdr),
            [
                f"{NAME} line 2, column amazon_return_id: amazon_return_id 'AR-1'"
                " appears more than once (lines 2, 5)"
            ],
        ),
        (
            lambda rows, hdr: ([*rows, ["AR-9", *rows[0][1:]]], hdr),
            [
                f"{NAME} line 2, column returns_notice: returns notice and SKU 'RN0001 / SKU-A'"
                " appear more than once"
            ],
        ),
        (
            lambda rows, hdr: ([[*rows[0][:6], "-1", *rows[0][7:]], *rows[1:]], hdr),
            [f"{NAME} line 2, column quantity: quantity '-1' is not a whole number of units"],
        ),
        (
            lambda rows, hdr: ([[*rows[0][:8], "2026-02-30", *rows[0][9:]], *rows[1:]], hdr),
            [f"{NAME} line 2, column returned_at: returned_at '2026-02-30' is not a valid calendar date"],
        ),
        (
            lambda rows, hdr: ([*rows[:2], [*rows[2][:7], "PREPAID", *rows[2][8:]]], hdr),
            [f"{NAME} line 4, column label: label 'PREPAID' is not one of REBOUND, APRL"],
        ),
        (
            lambda rows, hdr: ([["", *rows[0][1:]], *rows[1:]], hdr),
            [f"{NAME} line 2, column amazon_return_id: amazon_return_id is empty"],
        ),
    ],
    ids=[
        "bad-column",
        "ragged-row",
        "bad-amount",
        "duplicate-id",
        "duplicate-notice-sku",
        "negative-qty",
        "bad-date",
        "bad-label",
        "empty-id",
    ],
)
def test_bad_file_is_rejected_whole(fresh_db, tmp_path, mutate, expected):
    rows, header = mutate([list(r) for r in GOOD], list(COLUMNS))
    base = write(tmp_path, rows, header)
    with pytest.raises(AmazonExportRejected) as err:
        import_amazon_export(fresh_db, base, "2026-10", at=AT)
    message = str(err.value)
    assert message.startswith(f"Amazon returns export {NAME} rejected, nothing imported")
    for part in expected or [f"{NAME} line 3: has 11 cells, the header has 10"]:
        assert part in message, message
    assert snapshot(fresh_db) == ([], [])


def test_bad_reissue_keeps_the_good_import_and_corrected_reissue_updates(fresh_db, tmp_path):
    base = write(tmp_path, GOOD)
    import_amazon_export(fresh_db, base, "2026-10", at=AT)
    before = snapshot(fresh_db)
    write(tmp_path, [*GOOD, ["AR-4", "RN0004", "", "", "", "SKU-D", "two", "REBOUND", "2026-10-10", ""]])
    with pytest.raises(AmazonExportRejected, match="line 5, column quantity"):
        import_amazon_export(fresh_db, base, "2026-10", at=AT)
    assert snapshot(fresh_db) == before
    with connect(fresh_db) as c:  # a post-hoc return already hangs off the dark return
        c.execute(
            "UPDATE ledger.amazon_return SET linked_return_id = 'RB-PH-1'"
            " WHERE amazon_return_id = 'AR-APRL-1'"
        )
    corrected = [[*GOOD[0][:9], "30.00"], GOOD[1]]  # AR-1 now charged, AR-APRL-1 dropped by Amazon
    write(tmp_path, corrected)
    r = import_amazon_export(fresh_db, base, "2026-10", at=datetime(2026, 11, 5, tzinfo=UTC))
    assert (r.status, r.rows, r.inserted, r.updated, r.removed) == ("IMPORTED", 2, 0, 1, 0)
    rows, files = snapshot(fresh_db)
    assert {x[0]: (str(x[9]) if x[9] is not None else None) for x in rows} == {
        "AR-1": "30.00",
        "AR-2": "12.50",
        "AR-APRL-1": None,
    }
    assert files[0][2] == 2 and files[0][1] != before[1][0][1]


def test_vanished_rows_are_found_by_an_index_probe_not_a_scan_per_row(fresh_db):
    """The removal of rows a re-issue dropped is an anti-join of the month's rows, written in the same
    transaction and so without statistics (the planner expects one), against the staged file: it must not
    scan the staged rows once per month row (9.5 s at 16,000 rows, quadratic beyond)."""
    from returnledger.reconciliation import amazon_export as ae

    n = 4000
    records = [
        (f"AR-{i}", f"RN-{i}", None, None, None, f"SKU-{i}", 1, "REBOUND", "2026-10-03", None)
        for i in range(n)
    ]
    conn = connect(fresh_db)
    try:
        ae.stage_rows(conn, records)
        conn.execute(ae._UPSERT_SQL, {"source": NAME, "at": AT, "period": "2026-10"})
        plan = "\n".join(
            r[0] for r in conn.execute("EXPLAIN " + ae._REMOVE_VANISHED_SQL, {"source": NAME}).fetchall()
        )
        assert conn.execute(ae._REMOVE_VANISHED_SQL, {"source": NAME}).rowcount == 0
    finally:
        conn.rollback()
        conn.close()
    assert "Seq Scan on export_rows" not in plan, plan
