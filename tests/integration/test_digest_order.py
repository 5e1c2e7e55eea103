"""A digest lists exceptions in the order of what they are about, not in the order they were raised
(issue 24: make cluster-demo raised two AMAZON_REJECTED of one confirm run in the other order than
make demo, and the integration digest listed them swapped)."""

from __future__ import annotations

from datetime import UTC, datetime

from returnledger.reports import digests as oc
from returnledger.store import db

AS_OF = datetime(2026, 10, 10, 7, tzinfo=UTC)


def test_exceptions_opened_together_are_listed_by_subject_whatever_order_they_were_raised_in(fresh_db):
    opened = datetime(2026, 10, 10, 0, tzinfo=UTC)
    with db.connect(fresh_db) as c:
        c.execute(
            "INSERT INTO ledger.owner_team (exception_type, owner, sla_days) VALUES"
            " ('AMAZON_REJECTED', 'integration', 5), ('DARK_RETURN', 'warehouse', 5)"
        )
        for subject in ("RB-9|1", "RB-1|1", "RB-5|1"):  # raised in this order: ids ascend this way
            c.execute(
                "INSERT INTO ledger.exception (type, owner, subject_key, detail, opened_at, opened_by_batch)"
                " VALUES ('AMAZON_REJECTED', 'integration', %s, %s, %s, 'b')",
                (subject, f"refused {subject}", opened),
            )
        c.commit()
    digests = {d.owner: d for d in oc.build_digests(fresh_db, as_of=AS_OF, kind="daily")}
    sections = {s.title: s for s in digests["integration"].sections}
    for title in ("Open exceptions, over SLA first", "New since yesterday"):
        subjects = [row[2] for row in sections[title].rows]
        assert subjects == ["RB-1|1", "RB-5|1", "RB-9|1"], (title, subjects)
