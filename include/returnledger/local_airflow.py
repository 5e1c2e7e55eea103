"""``make airflow``: a local ``airflow standalone`` that stops cleanly on Ctrl-C.

Standalone stops its components on SIGINT, but its output threads can wait
forever on a pipe that a grandchild process still holds, leaving zombies
behind. This wrapper runs standalone in its own process group, forwards the
first Ctrl-C (or SIGTERM) as SIGINT, waits for a clean exit, and only then
ends whatever is left of the group.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def group_alive(pgid: int) -> bool:
    """Is any process of the process group ``pgid`` left? (One of another user's counts as alive.)"""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


_group_alive = group_alive


def run_standalone(grace_s: float = 30.0) -> int:
    proc = subprocess.Popen(["airflow", "standalone"], start_new_session=True)
    stopping = {"at": None}

    def stop(signum, frame):  # noqa: ARG001
        if stopping["at"] is None:
            stopping["at"] = time.monotonic()
            print("\nreturnledger: stopping airflow standalone ...", file=sys.stderr, flush=True)
            os.killpg(proc.pid, signal.SIGINT)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while proc.poll() is None:
        if stopping["at"] is not None and time.monotonic() - stopping["at"] > grace_s:
            break
        time.sleep(0.2)
    clean = proc.poll() is not None
    for sig in (signal.SIGTERM, signal.SIGKILL):  # whatever is left of the group (stuck pipes, workers)
        if not _group_alive(proc.pid):
            break
        os.killpg(proc.pid, sig)
        deadline = time.monotonic() + 10
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            try:
                os.waitpid(-proc.pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.2)
    proc.poll()
    print("returnledger: airflow standalone stopped" + ("" if clean else " (its components exited; its stuck output threads were ended)"),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_standalone())
