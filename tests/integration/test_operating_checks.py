"""Operating checks on a small seeded ledger (real PostgreSQL): as-of counts, routing, SYNC_STALLED.

The seed is built so that each count has a reason to be what it is, including
rows that must NOT count (resolved before the run date, opened after it,
answered in time), so a wrong window or a now() shows up as a wrong number.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from returnledger.exception_queue import stalled
from returnledger.reference import review
from returnledger.reports import digests as oc
from returnledger.store import db

pytestmark = pytest.mark.integration


def utc(*a) -> datetime:
    return datetime(*a, tzinfo=UTC)


AS_OF = utc(2026, 10, 10)  # the daily run's data interval end
WEEK_END = utc(2026, 10, 12)  # a Monday: the weekly review's run
OWNERS = {
    "UNMAPPED_REASON_CODE": ("operations", 2),
    "SKU_MISMATCH": ("operations", 2),
    "INVALID_EVENT": ("integration", 3),
    "OUT_OF_SEQUENCE": ("integration", 3),
    "QUANTITY_MISMATCH": ("warehouse", 5),
    "AMAZON_REJECTED": ("integration", 2),
    "CREDIT_MISSING": ("finance", 5),
    "DARK_RETURN": ("warehouse", 3),
    "CREDIT_MISMATCH": ("finance", 5),
    "SYNC_STALLED": ("integration", 1),
}


def seed(dsn: str) -> None:
    with db.connect(dsn) as c:
        for t, (owner, sla) in OWNERS.items():
            c.execute(
                "INSERT INTO ledger.owner_team (exception_type, owner, sla_days, what_to_do)"
                " VALUES (%s, %s, %s, 'act')",
                (t, owner, sla),
            )
        for rid in ("R-1", "R-2", "R-3", "R-5", "R-6", "R-7", "R-8", "R-9", "R-10"):
            c.execute(
                "INSERT INTO ledger.return_order (return_id, returns_notice, created_at) VALUES (%s, %s, %s)",
                (rid, f"RN-{rid}", utc(2026, 10, 1)),
            )
        lines = [  # rid, line, sku, reason, qty, state, received_at
            ("R-1", 1, "SKU-A", "GIFT_UNWANTED", 1, "ANNOUNCED", None),
            ("R-2", 1, "SKU-X", "FAULTY", 1, "ANNOUNCED", None),
            ("R-3", 1, "SKU-A", "FAULTY", 2, "RECEIVED", utc(2026, 10, 3, 9)),  # 7 days, not dispositioned
            ("R-3", 2, "SKU-B", "CHANGED_MIND", 2, "GRADED", utc(2026, 10, 8, 9)),  # only 2 days
            ("R-5", 1, "SKU-A", "FAULTY", 1, "DISPOSITIONED", utc(2026, 10, 6)),
            ("R-6", 1, "SKU-B", "FAULTY", 1, "CREDIT_SUBMITTED", utc(2026, 10, 6)),
            ("R-7", 1, "SKU-C", "FAULTY", 1, "CREDIT_SUBMITTED", utc(2026, 10, 7)),
            ("R-8", 1, "SKU-C", "CHANGED_MIND", 1, "CLOSED", utc(2026, 10, 4)),
            ("R-9", 1, "SKU-A", "FAULTY", 1, "CLOSED", utc(2026, 10, 4)),
            ("R-10", 1, "SKU-A", "CHANGED_MIND", 3, "CLOSED", utc(2026, 10, 7)),
        ]
        for rid, n, sku, reason, qty, state, rec in lines:
            c.execute(
                "INSERT INTO ledger.return_line (return_id, line, sku, reason, quantity_announced,"
                " quantity_received, state, received_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (rid, n, sku, reason, qty, qty if rec else None, state, rec),
            )
        exc = [  # key, type, owner, subject, rid, line, opened, resolved, status
            ("E1", "UNMAPPED_REASON_CODE", "R-1|1", "R-1", 1, utc(2026, 10, 9, 6), None, "open"),
            ("E2", "SKU_MISMATCH", "R-2|1", "R-2", 1, utc(2026, 10, 5, 6), None, "open"),
            ("E3", "QUANTITY_MISMATCH", "R-3|1", "R-3", 1, utc(2026, 10, 1), None, "open"),
            (
                "E4",
                "QUANTITY_MISMATCH",
                "R-3|2",
                "R-3",
                2,
                utc(2026, 10, 2),
                utc(2026, 10, 9, 12),
                "resolved",
            ),
            ("E5", "CREDIT_MISSING", "R-5|1", "R-5", 1, utc(2026, 10, 8), utc(2026, 10, 12, 12), "resolved"),
            ("E6", "DARK_RETURN", "AMZ-1", None, None, utc(2026, 10, 11), None, "open"),
            (
                "E7",
                "INVALID_EVENT",
                "raw:1",
                None,
                None,
                utc(2026, 10, 9, 12),
                utc(2026, 10, 9, 18),
                "dismissed",
            ),
        ]
        for _key, t, subject, rid, line, opened, resolved, status in exc:
            c.execute(
                "INSERT INTO ledger.exception (type, owner, status, subject_key, return_id, line,"
                " amazon_return_id, detail, opened_at, opened_by_batch, resolved_at, resolved_by, resolution)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'seed', %s, %s, %s)",
                (
                    t,
                    OWNERS[t][0],
                    status,
                    subject,
                    rid,
                    line,
                    subject if t == "DARK_RETURN" else None,
                    f"{t} {{ {subject} }}",
                    opened,
                    resolved,
                    "x" if resolved else None,
                    "done" if resolved else None,
                ),
            )
        c.execute(
            "INSERT INTO ledger.amazon_return (amazon_return_id, returns_notice, sku, asin, quantity, label,"
            " returned_at, source_file, imported_at) VALUES ('AMZ-1', 'RN-D1', 'SKU-A', 'B0A', 1, 'APRL',"
            " '2026-10-09', 'vc.csv', %s)",
            (utc(2026, 10, 11),),
        )
        subs = [  # key, rid, status, created, submitted, resolved
            ("credit:R-5:1", "R-5", "PENDING", utc(2026, 10, 8), None, None),  # 48 h pending
            ("credit:R-6:1", "R-6", "SUBMITTED", utc(2026, 10, 6), utc(2026, 10, 7), None),  # 72 h unanswered
            ("credit:R-7:1", "R-7", "SUBMITTED", utc(2026, 10, 9), utc(2026, 10, 9, 12), None),  # 12 h: fine
            ("credit:R-8:1", "R-8", "ACCEPTED", utc(2026, 10, 4), utc(2026, 10, 4), utc(2026, 10, 5)),
            # accepted only after the run date: at AS_OF it was unanswered for 4 days
            ("credit:R-9:1", "R-9", "ACCEPTED", utc(2026, 10, 5), utc(2026, 10, 6), utc(2026, 10, 11)),
        ]
        for key, rid, status, created, submitted, resolved in subs:
            c.execute(
                "INSERT INTO ledger.amazon_submission (idempotency_key, kind, return_id, line, sku, quantity,"
                " status, created_at, created_batch, submitted_at, resolved_at, attempts)"
                " VALUES (%s, 'CREDIT_NOTE', %s, 1, 'SKU-A', 1, %s, %s, 'seed', %s, %s, 1)",
                (key, rid, status, created, submitted, resolved),
            )
        for i, (rid, held_at) in enumerate((("R-1", utc(2026, 10, 5)), ("R-2", utc(2026, 10, 9))), start=1):
            raw = c.execute(
                "INSERT INTO ledger.raw_event (event_key, event_id, payload, received_at, batch_id)"
                " VALUES (%s, %s, %s, %s, 'seed') RETURNING raw_id",
                (f"ev-{i}", f"ev-{i}", json.dumps({"return_id": rid}), held_at),
            ).fetchone()[0]
            c.execute(
                "INSERT INTO ledger.event_outcome (raw_id, status, batch_id, decided_at)"
                " VALUES (%s, 'HELD', 'seed', %s)",
                (raw, held_at),
            )
            c.execute(
                "INSERT INTO ledger.held_event (raw_id, return_id, line, reason, held_at)"
                " VALUES (%s, %s, 1, 'UNMAPPED_REASON_CODE', %s)",
                (raw, rid, held_at),
            )
        c.execute(
            "INSERT INTO ledger.sync_run (batch_id, window_end, started_as_of, finished_at)"
            " VALUES ('returns_sync:2026-10-07', %s, %s, %s)",
            (utc(2026, 10, 8), utc(2026, 10, 8, 0, 5), utc(2026, 10, 8, 6)),
        )
        c.execute(
            "INSERT INTO ledger.reason_mapping (rebound_reason, amazon_reason, active, updated_at,"
            " updated_by, reviewed_at) VALUES ('FAULTY', 'CR-DEFECTIVE', true, %s, 'seed', NULL),"
            " ('CHANGED_MIND', 'CR-UNWANTED_ITEM', true, %s, 'seed', %s),"
            " ('TOO_SMALL', 'CR-APPAREL_TOO_SMALL', true, %s, 'seed', NULL),"
            " ('OLD_CODE', 'CR-OTHER', false, %s, 'seed', NULL)",
            (utc(2026, 6, 1), utc(2026, 5, 1), utc(2026, 9, 1), utc(2026, 10, 1), utc(2026, 1, 1)),
        )
        c.commit()


@pytest.fixture
def ledger(fresh_db):
    seed(fresh_db)
    return fresh_db


def by_owner(digests):
    return {d.owner: d for d in digests}


def test_daily_counts_are_as_of_the_run_date(ledger):
    d = by_owner(oc.build_digests(ledger, as_of=AS_OF, kind="daily"))
    assert sorted(d) == ["finance", "integration", "operations", "warehouse"]
    assert d["operations"].counts == {
        "open": 2,
        "carried_over": 0,
        "new": 1,
        "resolved": 0,
        "sla_breached": 1,
        "aged_over_7d": 0,
        "stalled_submissions": 0,
        "stalled_held_lines": 0,
        "uncredited_lines": 0,
        "sync_late": 0,
        "lines_not_dispositioned": 0,
    }
    w = d["warehouse"].counts
    # E3 open 9 days (SLA 5), E4 resolved yesterday, E6 opened after the run date: not there yet
    assert (w["open"], w["new"], w["resolved"], w["sla_breached"], w["aged_over_7d"]) == (1, 0, 1, 1, 1)
    assert w["lines_not_dispositioned"] == 1
    # E5 was resolved only after the run date: open as of then
    assert d["finance"].counts["open"] == 1
    i = d["integration"].counts
    assert (i["open"], i["new"], i["resolved"]) == (0, 1, 1)
    # R-5 pending 48 h, R-6 unanswered 72 h, R-9 unanswered at the run date (accepted later); R-7 is in time
    assert (i["stalled_submissions"], i["stalled_held_lines"], i["sync_late"]) == (3, 1, 1)
    html = d["integration"].html
    for key in ("credit:R-5:1", "credit:R-6:1", "credit:R-9:1"):
        assert key in html
    assert "credit:R-7:1" not in html
    late_lines = {s.title: s for s in d["warehouse"].sections}[
        "Received but not dispositioned for 5+ days"
    ].rows
    assert [(r[0], r[1], r[7]) for r in late_lines] == [("R-3", 1, 6)]


def test_check_stalled_flows_raises_once_and_resolves_what_moved(ledger):
    first = stalled.check_stalled_flows(ledger, as_of=AS_OF)
    assert first == {
        "stalled_submissions": 3,
        "stalled_held_lines": 1,
        "uncredited_lines": 0,
        "sync_late": 1,
        "raised": 5,
        "resolved": 0,
    }
    again = stalled.check_stalled_flows(ledger, as_of=AS_OF)
    assert again["raised"] == 0 and again["resolved"] == 0
    with db.connect(ledger) as c:
        rows = c.execute(
            "SELECT subject_key, owner, opened_at, return_id, line FROM ledger.exception"
            " WHERE type = 'SYNC_STALLED' ORDER BY subject_key"
        ).fetchall()
    assert [r[0] for r in rows] == [
        "held:R-1|1",
        "submission:credit:R-5:1",
        "submission:credit:R-6:1",
        "submission:credit:R-9:1",
        "sync:returns_sync",
    ]
    assert {r[1] for r in rows} == {"integration"} and {r[2] for r in rows} == {AS_OF}
    # the digest now shows them as new, open integration exceptions
    i = by_owner(oc.build_digests(ledger, as_of=AS_OF, kind="daily"))["integration"].counts
    assert (i["open"], i["new"]) == (5, 6)
    # next day: R-5 was sent, R-9 answered (10-11 00:00 is not after the run), the sync is still late
    with db.connect(ledger) as c:
        c.execute(
            "UPDATE ledger.amazon_submission SET status = 'SUBMITTED', submitted_at = %s"
            " WHERE idempotency_key = 'credit:R-5:1'",
            (utc(2026, 10, 10, 1),),
        )
        c.commit()
    nxt = stalled.check_stalled_flows(ledger, as_of=utc(2026, 10, 11))
    assert (nxt["raised"], nxt["resolved"]) == (0, 2)
    with db.connect(ledger) as c:
        still = c.execute(
            "SELECT subject_key FROM ledger.exception WHERE type = 'SYNC_STALLED' AND status = 'open'"
            " ORDER BY 1"
        ).fetchall()
        who = c.execute(
            "SELECT DISTINCT resolved_by FROM ledger.exception WHERE type = 'SYNC_STALLED'"
            " AND status = 'resolved'"
        ).fetchall()
    assert [s[0] for s in still] == ["held:R-1|1", "submission:credit:R-6:1", "sync:returns_sync"]
    assert who == [("operating_checks",)]


def test_a_fresh_sync_clears_the_late_sync_flag(ledger):
    with db.connect(ledger) as c:
        c.execute(
            "INSERT INTO ledger.sync_run (batch_id, window_end, started_as_of, finished_at)"
            " VALUES ('returns_sync:2026-10-10', %s, %s, %s)",
            (AS_OF, utc(2026, 10, 10, 0, 5), utc(2026, 10, 10, 0, 20)),
        )
        c.commit()
    # a sync that finished after the run date does not count for that date ...
    assert stalled.check_stalled_flows(ledger, as_of=AS_OF)["sync_late"] == 1
    # ... and clears the flag (and its SYNC_STALLED exception) for a check after it
    later = stalled.check_stalled_flows(ledger, as_of=utc(2026, 10, 10, 7))
    assert later["sync_late"] == 0 and later["resolved"] >= 1
    with db.connect(ledger) as c:
        assert c.execute(
            "SELECT status FROM ledger.exception WHERE subject_key = 'sync:returns_sync'"
        ).fetchall() == [("resolved",)]


def test_weekly_review_trend_top_skus_stale_mappings_dark_returns(ledger):
    d = by_owner(oc.build_digests(ledger, as_of=WEEK_END, kind="weekly"))
    assert d["operations"].counts == {
        "opened_this_week": 2,
        "resolved_this_week": 0,
        "open": 2,
        "carried_over_open": 0,
        "carried_over_resolved": 0,
        "sla_breached": 2,
        "top_skus": 3,
        "stale_mappings": 1,
        "dark_returns_open": 0,
    }
    assert d["warehouse"].counts == {
        "opened_this_week": 1,
        "resolved_this_week": 1,
        "open": 2,
        "carried_over_open": 0,
        "carried_over_resolved": 0,
        "sla_breached": 1,
        "top_skus": 0,
        "stale_mappings": 0,
        "dark_returns_open": 1,
    }
    assert (d["finance"].counts["opened_this_week"], d["finance"].counts["open"]) == (1, 1)
    assert (d["integration"].counts["opened_this_week"], d["integration"].counts["resolved_this_week"]) == (
        1,
        1,
    )
    ops = {s.title: s for s in d["operations"].sections}
    skus = ops["Top 10 returned SKUs this week"].rows
    # received in the week to 10-12: SKU-A 1 + 3, SKU-B 1 + 2 (R-6, R-3/2), SKU-C 1
    assert [(r[0], r[3]) for r in skus] == [("SKU-A", 4), ("SKU-B", 3), ("SKU-C", 1)]
    reasons = ops["Top 10 return reasons this week"].rows
    assert [(r[0], r[1], r[3]) for r in reasons] == [
        ("CHANGED_MIND", "CR-UNWANTED_ITEM", 5),
        ("FAULTY", "CR-DEFECTIVE", 3),
    ]
    assert [r[0] for r in ops["Reason mappings not reviewed in 90 days"].rows] == ["FAULTY"]
    trend = ops["Exceptions opened / resolved per week"]
    assert trend.columns[-1] == "week to 2026-10-12" and len(trend.columns) == 5
    assert ["SKU_MISMATCH", "0 / 0", "0 / 0", "0 / 0", "1 / 0"] in trend.rows
    dark = {s.title: s for s in d["warehouse"].sections}["Unresolved dark returns"].rows
    assert [(r[1], r[2], r[4]) for r in dark] == [("AMZ-1", "RN-D1", "B0A")]


def test_html_is_plain_tables_with_assertable_counts_and_no_jinja(ledger, tmp_path):
    digests = oc.build_digests(ledger, as_of=AS_OF, kind="daily")
    paths = oc.write_digests(digests, tmp_path)
    assert sorted(p.name for p in paths) == [
        f"daily-2026-10-10-{t}.html" for t in ("finance", "integration", "operations", "warehouse")
    ]
    index = json.loads((tmp_path / "daily-2026-10-10.json").read_text())
    assert {e["owner"]: e["counts"]["open"] for e in index} == {d.owner: d.counts["open"] for d in digests}
    for d in digests:
        assert "{{" not in d.html and "{%" not in d.html and "{#" not in d.html
        shown = dict(re.findall(r'data-count="(\w+)">(\d+)<', d.html))
        assert {k: int(v) for k, v in shown.items()} == d.counts
        assert d.html.count("<table") >= 1 + sum(1 for s in d.sections if s.rows)
    # exception details are escaped, including the braces of "{ R-3|1 }"
    wh = (tmp_path / "daily-2026-10-10-warehouse.html").read_text()
    assert "QUANTITY_MISMATCH &#123; R-3|1 &#125;" in wh
    again = oc.digest_from_file(index[0])
    assert again.html == digests[0].html and again.counts == digests[0].counts


def test_bad_arguments_are_refused(ledger):
    with pytest.raises(ValueError, match="daily"):
        oc.build_digests(ledger, as_of=AS_OF, kind="monthly")
    with pytest.raises(ValueError, match="timezone"):
        oc.build_digests(ledger, as_of=datetime(2026, 10, 10), kind="daily")


def test_thresholds_change_what_counts_as_stalled(ledger):
    strict = oc.Thresholds(submitted_unanswered=timedelta(hours=6), held_event=timedelta(hours=12))
    with db.connect(ledger) as c:
        found = stalled.stalled_flows(c, as_of=AS_OF, thresholds=strict)
    assert sorted(s["idempotency_key"] for s in found["submissions"]) == [
        "credit:R-5:1",
        "credit:R-6:1",
        "credit:R-7:1",
        "credit:R-9:1",
    ]
    assert [h["return_id"] for h in found["held"]] == ["R-1", "R-2"]


def test_reviewing_a_mapping_takes_it_off_the_weekly_list(ledger):
    from returnledger.exception_queue.queue import ExceptionActionError

    # a refused review is the review's own error, not an exception-queue action's
    with pytest.raises(review.MappingReviewError, match="no active reason mapping for OLD_CODE") as refused:
        review.mark_mappings_reviewed(ledger, ["FAULTY", "OLD_CODE"], actor="olga", at=utc(2026, 10, 11))
    assert not isinstance(refused.value, ExceptionActionError)
    with pytest.raises(review.MappingReviewError, match="actor must not be empty"):
        review.mark_mappings_reviewed(ledger, ["FAULTY"], actor=" ", at=utc(2026, 10, 11))
    with db.connect(ledger) as c:  # refused as a whole: FAULTY is not marked either
        assert c.execute(
            "SELECT reviewed_at FROM ledger.reason_mapping WHERE rebound_reason = 'FAULTY'"
        ).fetchone() == (None,)
    assert review.mark_mappings_reviewed(
        ledger, ["FAULTY"], actor="olga", at=utc(2026, 10, 11), why="still the right code"
    ) == ["FAULTY"]
    ops = by_owner(oc.build_digests(ledger, as_of=WEEK_END, kind="weekly"))["operations"]
    assert ops.counts["stale_mappings"] == 0
    # a rerun of an earlier week still shows it: the review came after that run date
    before = by_owner(oc.build_digests(ledger, as_of=utc(2026, 10, 10), kind="weekly"))["operations"]
    assert before.counts["stale_mappings"] == 1
    with db.connect(ledger) as c:
        assert c.execute("SELECT actor, action, subject, detail FROM ledger.audit_log").fetchall() == [
            (
                "olga",
                "reason_mapping.review",
                "reason:FAULTY",
                {"amazon_reason": "CR-DEFECTIVE", "why": "still the right code"},
            )
        ]


def test_digest_cli_writes_the_files(ledger, tmp_path, capsys):
    import argparse

    from returnledger.cli import reports as reports_cli

    parser = argparse.ArgumentParser(prog="returnledger")
    reports_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "digest",
            "--kind",
            "daily",
            "--as-of",
            "2026-10-10",
            "--check",
            "--out",
            str(tmp_path),
            "--dsn",
            ledger,
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert '"raised": 5' in out and "daily-2026-10-10-integration.html" in out
    assert len(list(tmp_path.glob("daily-2026-10-10-*.html"))) == 4


def test_exceptions_carried_over_from_earlier_months_are_counted_apart_from_new_ones(ledger):
    """An exception opened in a month before the digest's day is carried over: the daily digest counts it
    apart from the month's new ones, and the weekly review shows whether that backlog shrinks."""
    with db.connect(ledger) as c:
        c.execute(  # a November exception: new in November, not carried over
            "INSERT INTO ledger.exception (type, owner, status, subject_key, return_id, line, detail,"
            " opened_at, opened_by_batch) VALUES ('CREDIT_MISSING', 'finance', 'open', 'R-7|1', 'R-7', 1,"
            " 'late', %s, 'seed')",
            (utc(2026, 11, 1, 10),),
        )
        c.execute(  # October's quantity mismatch settled on 1 November, its dark return on 5 November
            "UPDATE ledger.exception SET status = 'resolved', resolved_at = %s, resolved_by = 'x',"
            " resolution = 'done' WHERE subject_key = 'R-3|1'",
            (utc(2026, 11, 1, 12),),
        )
        c.execute(
            "UPDATE ledger.exception SET status = 'resolved', resolved_at = %s, resolved_by = 'x',"
            " resolution = 'done' WHERE subject_key = 'AMZ-1'",
            (utc(2026, 11, 5),),
        )
        c.commit()
    d = by_owner(oc.build_digests(ledger, as_of=utc(2026, 11, 2, 7), kind="daily"))
    # operations: E1 and E2 (October) still open; finance: only the November exception; warehouse: AMZ-1
    assert {t: (x.counts["open"], x.counts["carried_over"]) for t, x in d.items()} == {
        "finance": (1, 0),
        "integration": (0, 0),
        "operations": (2, 2),
        "warehouse": (1, 1),
    }
    by_type = {s.title: s for s in d["operations"].sections}["Open exceptions by type"]
    assert by_type.columns[2] == "carried over from earlier months"
    assert sorted((r[0], r[1], r[2]) for r in by_type.rows) == [
        ("SKU_MISMATCH", 1, 1),
        ("UNMAPPED_REASON_CODE", 1, 1),
    ]
    # in October nothing is carried over: every open exception is the month's own
    october = by_owner(oc.build_digests(ledger, as_of=AS_OF, kind="daily"))
    assert {x.counts["carried_over"] for x in october.values()} == {0}

    w = by_owner(oc.build_digests(ledger, as_of=utc(2026, 11, 9), kind="weekly"))
    # the week to 9 November settled the warehouse's carried-over dark return; operations' two stay open
    assert (w["warehouse"].counts["carried_over_open"], w["warehouse"].counts["carried_over_resolved"]) == (
        0,
        1,
    )
    assert (w["operations"].counts["carried_over_open"], w["operations"].counts["carried_over_resolved"]) == (
        2,
        0,
    )
    assert w["finance"].counts["carried_over_open"] == 0  # opened in November: new, not carried over
    backlog = {s.title: s for s in w["warehouse"].sections}["Open from earlier months at each week end"]
    assert backlog.columns == ["type", *(f"week to 2026-{m}" for m in ("10-19", "10-26", "11-02", "11-09"))]
    assert backlog.rows == [["DARK_RETURN", 0, 0, 1, 0]]  # the backlog shrank
    ops = {s.title: s for s in w["operations"].sections}["Open from earlier months at each week end"]
    assert ops.rows == [["SKU_MISMATCH", 0, 0, 1, 1], ["UNMAPPED_REASON_CODE", 0, 0, 1, 1]]
