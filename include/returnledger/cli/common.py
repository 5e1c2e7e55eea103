"""What every command shares: the operator's clock and name, and times given on the command line.

An operator's action happens when the operator runs it, so the command line (and only it) reads the
wall clock; everything below it takes its time explicitly.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


def now() -> datetime:
    return datetime.now(UTC)


def login_name() -> str:
    """The operator's login name ("" where a container has none)."""
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return ""


def utc_time(text: str | None) -> datetime:
    """An ISO date or time from the command line; a naive one means UTC, none means now."""
    if not text:
        return now()
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def print_json(result: Any, **dumps: Any) -> int:
    print(json.dumps(result, default=str, **dumps))
    return 0


def refusing(fn: Callable[[Any], int], *errors: type[Exception]) -> Callable[[Any], int]:
    """A bad operator input is a refusal with a readable message (exit 2), not a traceback."""
    caught = errors or (ValueError, LookupError)

    def run(args) -> int:
        try:
            return fn(args)
        except caught as exc:
            print(f"refused: {exc}")
            return 2

    return run
