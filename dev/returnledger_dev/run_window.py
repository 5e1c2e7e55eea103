"""One sync run end to end, outside the scheduler: the steps of ``returnledger.sync.steps``, in their order.

Tests run a window with ``run_window``; the DAG ``returns_sync`` makes one task per step from the same
definition, and ``bench/bench_daily.py`` runs the steps that do not talk to Amazon with ``run_steps``.
It is dev tooling: production runs the steps through the DAG.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

from returnledger.moment import RunMoment
from returnledger.sync import steps as sync_steps


class ClientsEnv:
    """What the steps take from outside, given directly: a DSN, clients and the vendor's ids."""

    def __init__(self, dsn: str, rebound=None, amazon=None, vendor: dict | None = None, result_dir=None):
        self._dsn, self._rebound, self._amazon = dsn, rebound, amazon
        self._vendor, self._result_dir = vendor or {}, result_dir

    def dsn(self) -> str:
        return self._dsn

    def rebound(self):
        return nullcontext(self._rebound)  # the caller owns the client

    def amazon(self) -> Any:
        return self._amazon

    def vendor(self) -> dict:
        return self._vendor

    def result_dir(self) -> Path | None:
        return self._result_dir


def run_steps(env, run: RunMoment, *, skip: Iterable[str] = ()) -> dict:
    """Every step of ``run`` in order (a branch's unpicked steps and ``skip`` left out); results by step."""
    skip = set(skip)
    results: dict[str, Any] = {}
    for step in sync_steps.STEPS:
        if step.name in skip or (step.branch_of and step.name not in results.get(step.branch_of, ())):
            continue
        results[step.name] = step.call(env, None if step.branch else run, results)
    return results


def run_window(
    dsn: str,
    rebound,
    amazon,
    *,
    window_end: datetime,
    vendor: dict,
    result_dir: Path | None = None,
    window_start: datetime | None = None,
) -> dict:
    """Every step of the sync run for ``[window_start, window_end)``; each step's counts by name."""
    run = RunMoment(window_end, window_start)
    results = run_steps(ClientsEnv(dsn, rebound, amazon, vendor, result_dir), run)
    return {name: r for name, r in results.items() if isinstance(r, dict)}
