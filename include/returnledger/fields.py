"""Field rules for ReBound events: what a field must be to count, in Python and in SQL, side by side.

Extract fills the typed columns of ``ledger.raw_event`` with the Python rules (a field of the wrong JSON
type is null there); the validation frame and apply read the fields only some event types carry with the
SQL twins, so a field passes or fails by the same rule wherever it is read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

#: the largest value an int4 column holds: ledger line numbers and quantities are int4
INT4_MAX = 2**31 - 1
INT4_MIN = -(2**31)


def parse_time(v: Any) -> datetime | None:
    """An ISO-8601 instant (no zone = UTC), else None; a feed repeats its timestamps, so they are cached."""
    return _parse_text_time(v) if isinstance(v, str) else None


@lru_cache(maxsize=1 << 16)
def _parse_text_time(v: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    t = t if t.tzinfo else t.replace(tzinfo=UTC)
    try:
        t.astimezone(UTC)  # an offset that pushes the instant beyond year 1..9999 is no time
    except OverflowError:
        return None
    return t


def as_text(v: Any) -> str | None:
    """The validation rule for text fields: a non-empty JSON string, else null. Characters PostgreSQL text
    cannot hold are kept visible as their escapes: NUL as ``\\u0000``, a lone surrogate as ``\\ud800``."""
    if type(v) is str and v and v.isascii() and "\x00" not in v:  # nearly every value: kept as it is
        return v
    if not isinstance(v, str) or not v:
        return None
    if "\x00" in v:
        v = v.replace("\x00", "\\u0000")
    if not v.isascii():
        try:
            v.encode()
        except UnicodeEncodeError:
            v = "".join(f"\\u{ord(c):04x}" if "\ud800" <= c <= "\udfff" else c for c in v)
    return v


def as_whole(v: Any) -> int | None:
    """The validation rule for counts: a JSON number with no fraction (not a boolean), else null."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if abs(v) < 10**15 else None
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return int(v)
    return None


def as_int4(v: Any) -> int | None:
    """A whole number an int4 column holds as it is, else null: binary COPY would wrap a larger one
    (line 4294967297 would land as line 1)."""
    w = as_whole(v)
    return w if w is not None and -INT4_MAX - 1 <= w <= INT4_MAX else None


def is_db_text(v: Any, *, empty: bool = False) -> bool:
    """A string PostgreSQL text holds as it is (no NUL, no lone surrogate)."""
    if not isinstance(v, str) or (not v and not empty) or "\x00" in v:
        return False
    if not v.isascii():
        try:
            v.encode()
        except UnicodeEncodeError:
            return False
    return True


# --------------------------------------------------------------------------- the same rules in SQL
# (read from a stored payload, aliased ``r``: the validation frame and apply use them)


def whole_sql(col: str) -> str:
    """SQL for the count rule of ``as_whole``, read from the stored payload."""
    v = f"(r.payload->'{col}')"
    return (
        f"CASE WHEN jsonb_typeof({v}) = 'number' AND {v}::numeric = trunc({v}::numeric) "
        f"AND abs({v}::numeric) < 1e15 THEN {v}::numeric::bigint END"
    )


def number_sql(col: str) -> str:
    """A whole number of any size from the stored payload, clamped into bigint (range checks still fail
    on a clamped value; the detail quotes the number as sent)."""
    v = f"(r.payload->'{col}')"
    return (
        f"CASE WHEN jsonb_typeof({v}) = 'number' AND {v}::numeric = trunc({v}::numeric) "
        f"THEN least(greatest({v}::numeric, -9e18), 9e18)::bigint END"
    )


def int4_sql(col: str, low: int = 0) -> str:
    """A whole number from ``low`` to 2^31-1 from the stored payload as int, else null (never an error)."""
    v = f"(r.payload->'{col}')"
    return (
        f"CASE WHEN jsonb_typeof({v}) = 'number' AND {v}::numeric = trunc({v}::numeric) "
        f"AND {v}::numeric BETWEEN {low} AND {INT4_MAX} THEN {v}::numeric::int END"
    )


def given_sql(col: str) -> str:
    """The value as sent (JSON text, cut short) for a failure's detail."""
    return f"COALESCE(left((r.payload->'{col}')::text, 40), 'missing')"


def text_sql(col: str) -> str:
    """SQL for the text rule of ``as_text``, read from the stored payload."""
    return (
        f"CASE WHEN jsonb_typeof(r.payload->'{col}') = 'string' AND r.payload->>'{col}' <> '' "
        f"THEN r.payload->>'{col}' END"
    )
