"""Run both simulators as one background process: ``start``, ``stop``, ``status``.

    python -m returnledger_dev.sandbox.serve start --scenario PATH --out DIR \\
        [--rebound-port 8701 --amazon-port 8702 --no-faults --seed 0]
    python -m returnledger_dev.sandbox.serve status
    python -m returnledger_dev.sandbox.serve stop

The default ports are the ones airflow_settings.yaml points the ``rebound_api``
and ``amazon_sp_api`` connections at, so a local Airflow runs against the
sandbox with no change. Loopback only. The pidfile and log live under
``.local/sandbox/``; ``stop`` asks the SP-API simulator to write its output
files before the process ends.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"
REBOUND_PORT, AMAZON_PORT = 8701, 8702
PROCESS_MARK = "returnledger_dev.sandbox.serve"


def state_dir(override: str | Path | None = None) -> Path:
    if override:
        d = Path(override)
    else:
        from returnledger.store.db import local_dir

        d = local_dir() / "sandbox"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _pidfile(d: Path) -> Path:
    return d / "sandbox.pid"


def _read_state(d: Path) -> dict | None:
    try:
        return json.loads(_pidfile(d).read_text())
    except (OSError, ValueError):
        return None


def _is_ours(pid: int) -> bool:
    """The pid is alive and is a sandbox server (a recycled pid must never be signalled)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (macOS): trust the pidfile
    return PROCESS_MARK in cmdline


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/_sandbox/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- commands ----------------------------------------------------------------------


def cmd_start(args) -> int:
    d = state_dir(args.state_dir)
    state = _read_state(d)
    if state and _is_ours(state["pid"]):
        print(
            f"sandbox already running (pid {state['pid']}): ReBound {state['rebound_url']}, "
            f"SP-API {state['amazon_url']}"
        )
        return 1
    scenario = Path(args.scenario).resolve()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log_path = d / "sandbox.log"
    cmd = [
        sys.executable,
        "-m",
        PROCESS_MARK,
        "_run",
        "--scenario",
        str(scenario),
        "--out",
        str(out),
        "--rebound-port",
        str(args.rebound_port),
        "--amazon-port",
        str(args.amazon_port),
        "--seed",
        str(args.seed),
        "--state-dir",
        str(d),
    ]
    if args.no_faults:
        cmd.append("--no-faults")
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    state = {
        "pid": proc.pid,
        "rebound_url": f"http://{HOST}:{args.rebound_port}",
        "amazon_url": f"http://{HOST}:{args.amazon_port}",
        "lwa_url": f"http://{HOST}:{args.amazon_port}/auth/o2/token",
        "scenario": str(scenario),
        "out": str(out),
        "log": str(log_path),
        "faults": not args.no_faults,
    }
    _pidfile(d).write_text(json.dumps(state, indent=1))
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _pidfile(d).unlink(missing_ok=True)
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            print("sandbox failed to start:\n" + "\n".join(tail), file=sys.stderr)
            return 1
        if _healthy(state["rebound_url"]) and _healthy(state["amazon_url"]):
            print(
                f"sandbox running (pid {proc.pid}), SIMULATED services:\n"
                f"  ReBound API  {state['rebound_url']}\n  SP-API       {state['amazon_url']}\n"
                f"  LWA token    {state['lwa_url']}\n  outputs      {out}\n  log          {log_path}"
            )
            return 0
        time.sleep(0.2)
    print(f"sandbox did not answer within {args.wait:.0f} s; see {log_path}", file=sys.stderr)
    _terminate(proc.pid, d)
    return 1


def _terminate(pid: int, d: Path, grace_s: float = 30.0) -> bool:
    if not _is_ours(pid):
        _pidfile(d).unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _is_ours(pid) or _reap(pid):
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        _reap(pid)
    _pidfile(d).unlink(missing_ok=True)
    return True


def _reap(pid: int) -> bool:
    """True once our own child has exited (collects it so it does not linger as a zombie)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:  # not our child (started by an earlier command)
        return False


def cmd_stop(args) -> int:
    d = state_dir(args.state_dir)
    state = _read_state(d)
    if not state:
        print("sandbox not running")
        return 0
    if _terminate(state["pid"], d):
        print(f"sandbox stopped (pid {state['pid']}); outputs in {state['out']}")
    else:
        print("sandbox not running (stale pidfile removed)")
    return 0


def cmd_status(args) -> int:
    d = state_dir(args.state_dir)
    state = _read_state(d)
    if not state or not _is_ours(state["pid"]):
        print("sandbox not running")
        return 3
    health = {name: _healthy(state[f"{name}_url"]) for name in ("rebound", "amazon")}
    print(json.dumps({**state, "healthy": health}, indent=1))
    return 0 if all(health.values()) else 1


def cmd_run(args) -> int:
    """The server process itself (started by ``start``): serve until SIGTERM/SIGINT."""
    from returnledger_dev.sandbox.harness import run_sandbox

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with run_sandbox(
        args.scenario,
        args.out,
        seed=args.seed,
        faults=not args.no_faults,
        rebound_port=args.rebound_port,
        amazon_port=args.amazon_port,
        host=HOST,
    ) as sandbox:
        print(
            f"serving ReBound (simulated) at {sandbox.rebound_url}, SP-API (simulated) at "
            f"{sandbox.amazon_url}",
            flush=True,
        )
        stop.wait()
        print("stopping: writing SP-API simulator outputs", flush=True)
        try:
            sandbox.dump()
        except Exception as exc:  # still shut down cleanly
            print(f"dump failed: {exc!r}", flush=True)
    state = _read_state(state_dir(args.state_dir))
    if state and state.get("pid") == os.getpid():
        _pidfile(state_dir(args.state_dir)).unlink(missing_ok=True)
    return 0


# --- argument parsing -----------------------------------------------------------------


def _add_commands(sub, *, hidden_run: bool) -> None:
    def common(p):
        p.add_argument("--state-dir", default=None, help="pidfile/log folder (default .local/sandbox)")

    start = sub.add_parser("start", help="start both simulators in the background")
    start.add_argument("--scenario", required=True, help="returns-scenario/1 JSON file")
    start.add_argument("--out", default="out", help="output folder for the simulators' files")
    start.add_argument("--rebound-port", type=int, default=REBOUND_PORT)
    start.add_argument("--amazon-port", type=int, default=AMAZON_PORT)
    start.add_argument("--no-faults", action="store_true", help="ignore the scenario's injected faults")
    start.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    start.add_argument("--wait", type=float, default=180.0, help="seconds to wait for both to answer")
    common(start)
    start.set_defaults(func=cmd_start)
    stop = sub.add_parser("stop", help="stop the background simulators (writes their outputs)")
    common(stop)
    stop.set_defaults(func=cmd_stop)
    status = sub.add_parser("status", help="is the sandbox running and healthy")
    common(status)
    status.set_defaults(func=cmd_status)
    if hidden_run:
        run = sub.add_parser("_run")
        run.add_argument("--scenario", required=True)
        run.add_argument("--out", required=True)
        run.add_argument("--rebound-port", type=int, default=REBOUND_PORT)
        run.add_argument("--amazon-port", type=int, default=AMAZON_PORT)
        run.add_argument("--no-faults", action="store_true")
        run.add_argument("--seed", type=int, default=0)
        common(run)
        run.set_defaults(func=cmd_run)


def register(subparsers) -> None:
    """``returnledger sandbox start|stop|status`` in the project CLI."""
    p = subparsers.add_parser("sandbox", help="the simulated ReBound API and SP-API (background process)")
    _add_commands(p.add_subparsers(dest="sandbox_command", required=True), hidden_run=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m returnledger_dev.sandbox.serve",
        description="Run the simulated ReBound API and SP-API.",
    )
    _add_commands(p.add_subparsers(dest="command", required=True), hidden_run=True)
    args = p.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
