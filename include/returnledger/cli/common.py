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


def store_path(where: str):
    """A folder of the object store given on the command line: an ``s3://`` URI through the Airflow
    connection (``aws_default``), as the DAGs reach it; a local folder or ``file://`` URI as it is."""
    from urllib.parse import urlsplit

    if urlsplit(where).scheme in ("s3", "s3a"):
        from returnledger.airflow.objects import storage_path

        return storage_path(where)
    return where
