"""Both simulators (ReBound and the SP-API) in a process of their own, on free loopback ports, for the
benchmarks (``returnledger_dev.sandbox.serve``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


class SandboxProcess:
    """``start`` on construction, ``stop`` when done; ``out`` holds the simulators' logs."""

    def __init__(self, scenario: Path, work: Path, *, out: Path | None = None, wait_s: int = 600):
        from returnledger_dev.sandbox.server import free_port

        self.state, self.out = work / "sandbox", out or work / "out"
        rport, aport = free_port(), free_port()
        self.rebound_url, self.amazon_url = f"http://127.0.0.1:{rport}", f"http://127.0.0.1:{aport}"
        self._cli(
            "start",
            "--scenario",
            str(scenario),
            "--out",
            str(self.out),
            "--rebound-port",
            str(rport),
            "--amazon-port",
            str(aport),
            "--wait",
            str(wait_s),
        )

    def _cli(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "returnledger_dev.sandbox.serve", *args, "--state-dir", str(self.state)],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def requests(self) -> list[dict]:
        """What the SP-API simulator has logged so far, one dict per request."""
        try:
            lines = (self.out / "amazon_requests.jsonl").read_text().splitlines()
        except OSError:
            return []
        return [json.loads(x) for x in lines if x.strip()]

    def stop(self) -> None:
        self._cli("stop")
