"""The comparison of two runs' digests and mail (returnledger_dev.demo.compare): make demo against
make cluster-demo of the same scenario."""

from __future__ import annotations

import json
from email.message import EmailMessage
from pathlib import Path

from returnledger_dev.demo import compare


def _run(out: Path, store: str, *, order=(0, 1), body="<p>3 open</p>") -> Path:
    (out / "digests").mkdir(parents=True)
    (out / "mail").mkdir()
    (out / "digests" / "daily-2026-10-02-finance.html").write_text(body)
    index = [{"owner": "finance", "file": "daily-2026-10-02-finance.html", "path": f"{store}/digests/x.html"}]
    (out / "digests" / "daily-2026-10-02.json").write_text(json.dumps(index))
    mails = [
        (
            "daily-2026-10-02-finance",
            "finance@localhost",
            "[returnledger] daily digest",
            body,
            "daily:finance",
        ),
        (
            "month-end-returns-report-2026-10-is-ready",
            "finance@localhost",
            "[returnledger] month-end returns report 2026-10 is ready",
            f"<pre>&#34;csv&#34;: &#34;{store}/reports/2026-10/month_end_report.csv&#34;</pre>",
            None,
        ),
    ]
    for n, i in enumerate(order, 1):
        label, to, subject, html, digest = mails[i]
        msg = EmailMessage()
        msg["To"], msg["Subject"] = to, subject
        if digest:
            msg["X-Returnledger-Digest"] = digest
        msg.set_content(html, subtype="html")
        (out / "mail" / f"{n:04d}-{label}.eml").write_bytes(msg.as_bytes())
    return out


def test_same_digests_and_mail_from_different_stores_and_arrival_orders(tmp_path):
    demo = _run(tmp_path / "demo", "file:///work/out/closes/..")
    cluster = _run(tmp_path / "cluster", "s3://aws_default@returnledger-store", order=(1, 0))
    counts, diffs = compare.compare(demo, cluster)
    assert counts == {"digest_files": [2, 2], "mails": [2, 2], "ids_only": []}
    assert diffs == []
    assert compare.main([str(demo), str(cluster)]) == 0


def test_a_different_digest_or_a_missing_mail_is_reported(tmp_path):
    demo = _run(tmp_path / "demo", "file:///out")
    cluster = _run(tmp_path / "cluster", "s3://b", body="<p>4 open</p>")
    (cluster / "mail" / "0002-month-end-returns-report-2026-10-is-ready.eml").unlink()
    _, diffs = compare.compare(demo, cluster)
    assert diffs == [
        "digest daily-2026-10-02-finance.html: differs",
        "mail month-end-returns-report-2026-10-is-ready: only in the first run",
        "mail daily-2026-10-02-finance: differs",
    ]
    assert compare.main([str(demo), str(cluster)]) == 1


def test_exception_ids_alone_are_counted_apart_but_type_and_subject_must_match(tmp_path):
    row = '<tr><td class="n">{id}</td><td>AMAZON_REJECTED</td><td>{subject}</td></tr>'
    demo = _run(tmp_path / "demo", "file:///o", body=row.format(id=123, subject="RB-1|1"))
    cluster = _run(tmp_path / "cluster", "s3://b", body=row.format(id=124, subject="RB-1|1"))
    counts, diffs = compare.compare(demo, cluster)
    assert diffs == []
    assert counts["ids_only"] == ["digest daily-2026-10-02-finance.html", "mail daily-2026-10-02-finance"]
    other = _run(tmp_path / "other", "s3://b", body=row.format(id=123, subject="RB-2|1"))
    assert compare.compare(demo, other)[1] == [
        "digest daily-2026-10-02-finance.html: differs",
        "mail daily-2026-10-02-finance: differs",
    ]
