"""``returnledger demo`` (what ``make demo`` runs) as a newcomer sees it, on a small generated scenario.

The scenario is ``generate.py``'s (12 returns) cut to Monday 5 to Monday 12 October: eight days, one whole
week. The demo must show one line per day and the summary, with no traceback and no log line on screen;
write each owner team's daily digest for every day and the weekly review of the week from 5 October (run on
Monday 12 October, before that day's sync); capture every mail in OUT/mail; and stop within seconds on
Ctrl-C (SIGINT) or SIGTERM, saying which day it stopped on, with no process of it left.
"""

from __future__ import annotations

import email
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import psutil
import pytest
import yaml

import demo_runs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
FIRST, LAST = date(2026, 10, 5), date(2026, 10, 12)
DAYS = [FIRST + timedelta(days=i) for i in range((LAST - FIRST).days + 1)]
WEEK = date(2026, 10, 5)  # the one full week; its review's as-of is Monday 12 October 07:00
FIXED_LINES = 45  # header, start-up, close and summary lines: bounded, whatever the days
LOG_LINE = re.compile(
    r"\[(debug|info|warning|error|critical)\s*\]|\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b"
    r"|Traceback|Warning:"
)


def _teams() -> list[str]:
    owners = yaml.safe_load((ROOT / "include" / "reference" / "owners.yaml").read_text())
    return sorted({v["owner"] for v in owners.values()})


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory, pg_server, generated_month):
    from returnledger_dev import scratch_db

    base = tmp_path_factory.mktemp("demo")
    scenario, _ = generated_month(12, 7, False)
    scenario["run"].update({"from": FIRST.isoformat(), "to": LAST.isoformat()})
    (base / "scenario.json").write_text(json.dumps(scenario))
    ledger = scratch_db.create_scratch_database(pg_server, "rl_demo")
    # each demo keeps its own Airflow metadata beside its own ledger (<ledger>_airflow, dropped below)
    yield {
        "base": base,
        "scenario": base / "scenario.json",
        "env": demo_runs.demo_env(ledger, base / "airflow_home"),
    }
    scratch_db.drop_database(pg_server, ledger)
    for recorded in base.glob("*/ledger_database.txt"):  # the ledgers the demos made for themselves
        demo_runs.drop_demo_databases(pg_server, recorded.parent)


def _command(demo_env, out: str) -> list[str]:
    return demo_runs.demo_command(demo_env["scenario"], demo_env["base"] / out)


def test_demo_shows_a_line_per_day_and_writes_digests_and_mail(demo_env):
    out = demo_env["base"] / "full"
    proc = subprocess.run(
        _command(demo_env, "full"),
        env=demo_env["env"],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=ROOT,
    )
    assert proc.returncode == 0, (
        proc.stdout[-3000:] + proc.stderr[-3000:] + (out / "demo.log").read_text()[-6000:]
    )
    lines = proc.stdout.splitlines()

    # the screen: nothing on stderr, no traceback or log line, one line per day, a bounded rest
    assert proc.stderr == ""
    assert [line for line in lines if LOG_LINE.search(line)] == []
    for day in DAYS:
        mine = [line for line in lines if line.startswith(f"  {day} ") and " events " in line]
        assert len(mine) == 1, (day, lines)
    monday = next(line for line in lines if line.startswith(f"  {LAST} ") and " events " in line)
    assert "weekly review 4" in monday and "digests 4" in monday
    assert len(lines) <= len(DAYS) + FIXED_LINES, lines
    assert (out / "demo.log").stat().st_size > 0
    assert any("demo.log" in line for line in lines)

    # digests: each team's daily digest for every day, and the weekly review of the full week
    teams = _teams()
    files = sorted(p.name for p in (out / "digests").glob("*.html"))
    daily = Counter(
        re.match(r"daily-\d{4}-\d{2}-\d{2}-(\w+)\.html$", f)[1] for f in files if f.startswith("daily-")
    )
    assert daily == {t: len(DAYS) for t in teams}
    as_of = (WEEK + timedelta(days=7)).isoformat()
    assert [f for f in files if f.startswith("weekly-")] == [f"weekly-{as_of}-{t}.html" for t in teams]

    # mail: every message the DAGs sent, per team: the daily digests, the weekly review, and finance's notice
    msgs = [email.message_from_bytes(p.read_bytes()) for p in sorted((out / "mail").glob("*.eml"))]
    by_to = Counter(m["To"] for m in msgs)
    assert by_to == {f"{t}@localhost": len(DAYS) + 1 + (t == "finance") for t in teams}
    kinds = Counter(m["X-Returnledger-Digest"] for m in msgs if m["X-Returnledger-Digest"])
    assert kinds == {**{f"daily:{t}": len(DAYS) for t in teams}, **{f"weekly:{t}": 1 for t in teams}}
    others = [m["Subject"] for m in msgs if not m["X-Returnledger-Digest"]]
    assert others == ["[returnledger] month-end returns report 2026-10 is ready"]  # no failure alert

    # the summary counts them and ends with what to open
    assert any(line.startswith(f"Digests per owner team: {len(DAYS) * len(teams)} daily") for line in lines)
    assert any(line.startswith(f"Mail captured: {len(msgs)} messages") for line in lines)
    tail = lines[-5:]
    assert tail[0] == "Open:"
    assert tail[1].split()[:2] == ["month-end", "report"] and tail[1].endswith("month_end_report.html")
    assert (out / "month_end_report.html").exists()
    assert tail[2].split()[0] == "digests" and tail[2].split()[1].endswith("digests/")
    assert tail[3].split()[0] == "mail" and tail[3].split()[1].endswith("mail/")
    assert "make airflow" in tail[4]


def _reader(stream) -> queue.Queue:
    q: queue.Queue = queue.Queue()

    def pump():
        for line in stream:
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_demo_within_seconds_and_leaves_nothing_running(demo_env, sig):
    out = f"stopped-{sig.name}"
    proc = subprocess.Popen(
        _command(demo_env, out),
        env=demo_env["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    screen, lines = _reader(proc.stdout), []
    try:
        deadline = time.monotonic() + 900
        while not any(line.startswith(f"  {FIRST} ") for line in lines):  # the first day is done
            assert time.monotonic() < deadline, lines
            line = screen.get(timeout=max(1.0, deadline - time.monotonic()))
            assert line is not None, (lines, proc.stderr.read())
            lines.append(line.rstrip("\n"))
        demo = psutil.Process(proc.pid)
        family = demo.children(recursive=True)
        assert family, "the month runs in a worker process"
        t0 = time.monotonic()
        os.kill(proc.pid, sig)
        rc = proc.wait(timeout=30)
        stopped_in = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    while (line := screen.get(timeout=10)) is not None:
        lines.append(line.rstrip("\n"))
    err = proc.stderr.read()

    assert stopped_in < 5, stopped_in
    assert rc == 128 + sig
    assert err == "" and [line for line in lines if LOG_LINE.search(line)] == [], (lines, err)
    said = next(line for line in lines if line.startswith("Stopped by"))
    assert sig.name in said
    assert re.search(rf"(on {FIRST + timedelta(days=1)} \(day 2 of 8|after {FIRST} \(day 1 of 8)", said), said
    assert "Nothing is left running." in lines
    time.sleep(0.5)
    assert [p.pid for p in family if _alive(p)] == []
    marker = str(demo_env["base"] / out)
    assert [
        p.pid for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])
    ] == []
