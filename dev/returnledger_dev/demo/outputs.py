"""What a demo run leaves: exceptions.csv, the summary (on screen and in summary.json) and the
per-day screen line.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path

from returnledger.render import spreadsheet_text
from returnledger.store import db

#: the files a demo run writes into its out folder (removed first, so a failed run leaves no stale ones)
RUN_OUTPUTS = (
    "amazon_requests.jsonl",
    "rebound_created_returns.jsonl",
    "exceptions.csv",
    "month_end_report.csv",
    "month_end_report.html",
    "amazon_inventory.csv",
    "summary.json",
)
#: each close run's report, as that close wrote it: OUT/closes/<period>/ (the report base of the runs)
CLOSES_DIR = "closes"
REPORT_FILES = ("month_end_report.csv", "month_end_report.html")
EXCEPTION_COLUMNS = [
    "exception_id",
    "type",
    "owner",
    "status",
    "return_id",
    "line",
    "sku",
    "amazon_return_id",
    "opened_at",
    "resolved_at",
    "detail",
]
#: the page of the Airflow UI plugin that `make airflow` serves
EXCEPTIONS_PAGE = "http://localhost:8080/plugin/returns-exceptions"


def export_exceptions(dsn: str, out_dir: Path) -> int:
    with db.connect(dsn) as conn:
        # a line's exception is keyed by return id and line; the Amazon record it cites stays in the detail,
        # so amazon_return_id names only exceptions about an Amazon record itself (e.g. DARK_RETURN)
        cols = [
            ("CASE WHEN return_id IS NULL THEN amazon_return_id END" if c == "amazon_return_id" else c)
            for c in EXCEPTION_COLUMNS
        ]
        rows = conn.execute(
            f"SELECT {', '.join(cols)} FROM ledger.exception ORDER BY exception_id"
        ).fetchall()
    with (out_dir / "exceptions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(EXCEPTION_COLUMNS)
        for r in rows:
            w.writerow([_csv_cell(v) for v in r])
    return len(rows)


def _csv_cell(v):
    """A cell of a CSV people open: text that would run as a spreadsheet formula is shown as text."""
    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.isoformat()
    return spreadsheet_text(v) if isinstance(v, str) else v


def summary(dsn: str) -> dict:
    with db.connect(dsn) as conn:
        states = dict(
            conn.execute("SELECT state, count(*) FROM ledger.return_line GROUP BY 1 ORDER BY 1").fetchall()
        )
        exc = conn.execute("""SELECT type, owner, status, count(*) FROM ledger.exception
                              GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""").fetchall()
        credits = conn.execute("""SELECT count(DISTINCT document_id), COALESCE(sum(quantity), 0),
                                         COALESCE(sum(quantity * unit_amount), 0)
                                  FROM ledger.amazon_submission WHERE kind = 'CREDIT_NOTE'
                                  AND status IN ('SUBMITTED', 'ACCEPTED', 'FAILED')""").fetchone()
        accepted = conn.execute("""SELECT COALESCE(sum(quantity * unit_amount), 0)
                                   FROM ledger.amazon_submission
                                   WHERE kind = 'CREDIT_NOTE' AND status = 'ACCEPTED'""").fetchone()[0]
        # the last close's rows (periods YYYY-MM sort by time): earlier closes reported other rows
        recon = dict(
            conn.execute("""SELECT recon_status, count(*) FROM ledger.recon_result
                             WHERE period = (SELECT max(period) FROM ledger.recon_result
                                              WHERE period NOT LIKE 'daily:%%')
                             GROUP BY 1 ORDER BY 1""").fetchall()
        )
    return {
        "lines_by_state": states,
        "exceptions": [{"type": t, "owner": o, "status": s, "count": n} for t, o, s, n in exc],
        "credit_notes_sent": credits[0],
        "units_credited": int(credits[1]),
        "credited_gbp": str(credits[2]),
        "accepted_gbp": str(accepted),
        "recon": recon,
    }


_COUNTS_SQL = """
SELECT (SELECT count(*) FROM ledger.raw_event),
       (SELECT count(*) FROM ledger.exception),
       (SELECT count(DISTINCT document_id) FROM ledger.amazon_submission
         WHERE kind = 'CREDIT_NOTE' AND status IN ('SUBMITTED', 'ACCEPTED', 'FAILED'))"""


def ledger_counts(dsn: str) -> tuple[int, int, int]:
    """(events received, exceptions raised, credit notes sent) so far: a day's counts are differences."""
    with db.connect(dsn) as conn:
        return tuple(conn.execute(_COUNTS_SQL).fetchone())


def digests_of(folder: Path, kind: str, as_of: datetime) -> int:
    index = folder / f"{kind}-{as_of:%Y-%m-%d}.json"
    try:
        return len(json.loads(index.read_text()))
    except (OSError, ValueError):
        return 0


_DIGEST_FILE = re.compile(r"^(daily|weekly)-(\d{4}-\d{2}-\d{2})-(.+)\.html$")


def digest_counts(folder: Path) -> dict:
    """Digest files by kind: how many, per team, and the as-of dates (digests/<kind>-<as of>-<team>.html)."""
    teams: dict[str, Counter] = {"daily": Counter(), "weekly": Counter()}
    dates: dict[str, set] = {"daily": set(), "weekly": set()}
    for p in folder.glob("*.html") if folder.is_dir() else []:
        m = _DIGEST_FILE.match(p.name)
        if m:
            teams[m[1]][m[3]] += 1
            dates[m[1]].add(m[2])
    return {
        k: {
            "files": sum(teams[k].values()),
            "by_team": dict(sorted(teams[k].items())),
            "as_of": sorted(dates[k]),
        }
        for k in teams
    }


def publish_close(out_dir: Path, period: str) -> bool:
    """After the close run of ``period``: its report (OUT/closes/<period>/) becomes the top-level
    month_end_report.*, the last close's in the end. False when the close wrote no report."""
    import shutil

    folder = out_dir / CLOSES_DIR / period
    if not all((folder / name).is_file() for name in REPORT_FILES):
        return False
    for name in REPORT_FILES:
        shutil.copyfile(folder / name, out_dir / name)
    return True


def day_line(
    day: date,
    delta: tuple[int, int, int],
    *,
    digests: int,
    weekly: int | None,
    operator: int,
    seconds: float,
    refused: int = 0,
    closes: Sequence[tuple[str, bool]] = (),
) -> str:
    """A scenario day on the screen; ``closes``: (period, report written) of the close runs made that day."""
    events, opened, credits = delta
    parts = [
        f"  {day} {day:%a}",
        f"events {events:>5}",
        f"exceptions opened {opened:>3}",
        f"credits sent {credits:>3}",
        f"digests {digests}",
    ]
    if weekly is not None:
        parts.append(f"weekly review {weekly}")
    if operator:
        parts.append(
            f"operator actions {operator}" + (f" ({refused} refused: see the log)" if refused else "")
        )
    for period, written in closes:
        parts.append(f"closed {period}" + ("" if written else " (report NOT written)"))
    return "  ".join(parts) + f"  ({seconds:.0f}s)"


def shown(path: Path) -> str:
    """A path as the user should type it: relative to the current folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def print_summary(s: dict, out=sys.stdout) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p("\n== returnledger run summary ==")
    p("Lines by state:")
    for k, v in s["lines_by_state"].items():
        p(f"  {k:<18}{v:>6}")
    p("Exceptions by type / owner / status:")
    for e in s["exceptions"]:
        p(f"  {e['type']:<22}{e['owner']:<13}{e['status']:<10}{e['count']:>5}")
    p(
        f"Credit notes sent: {s['credit_notes_sent']}  units credited: {s['units_credited']}  "
        f"£ credited: {s['credited_gbp']}  £ accepted by Amazon: {s['accepted_gbp']}"
    )
    if s["recon"]:
        p("Month-end reconciliation (last close): " + ", ".join(f"{k} {v}" for k, v in s["recon"].items()))
    o = s.get("outputs") or {}
    if o.get("closes"):
        p(f"Closes made: {', '.join(o['closes'])} (each close's report: {o['closes_dir']}/<period>/)")
    d = s.get("digests")
    if d:
        daily, weekly = d["daily"], d["weekly"]
        weeks = [(date.fromisoformat(a) - timedelta(days=7)).strftime("%m-%d") for a in weekly["as_of"]]
        p(
            f"Digests per owner team: {daily['files']} daily ({len(daily['as_of'])} days x "
            f"{len(daily['by_team'])} teams), {weekly['files']} weekly reviews"
            + (f" (weeks from Monday {', '.join(weeks)})" if weeks else " (no full week in the run)")
        )
    m = s.get("mail")
    if m:
        p(
            f"Mail captured: {m['total']} messages ("
            + ", ".join(f"{k} {v}" for k, v in m["by_kind"].items())
            + ")"
        )
        p("  to " + ", ".join(f"{k} {v}" for k, v in m["by_recipient"].items()))
    o = s.get("outputs")
    if o:
        p(f"Finished in {s.get('seconds', '?')} s. Server start-up, Airflow and GX logs: {o['log']}")
        p("Open:")
        p(f"  month-end report   {o['report'] or '(not written: no close run)'}")
        p(f"  digests            {o['digests']}/")
        p(f"  mail               {o['mail']}/  (one .eml file per message)")
        p(f"  exceptions page    make airflow   (then {EXCEPTIONS_PAGE})")
