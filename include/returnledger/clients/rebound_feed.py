"""ReBound's errors and its event-feed page format: what a page is and how its bytes are read.

Kept apart from the HTTP client (clients/rebound.py) because reading a page is pure byte work, tested
on hostile bytes without a server; the sync lands ``EventPage.events`` exactly as they came.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import msgspec


class ReboundError(Exception):
    """ReBound answered with an error we must not retry (or retries ran out)."""

    def __init__(self, message: str, *, status: int | None = None, body: str | None = None):
        super().__init__(
            f"{message} (status {status}): {body[:500]}" if status is not None and body else message
        )
        self.status = status
        self.body = body


class ReboundUnavailableError(ReboundError):
    """ReBound stayed unavailable (5xx, 429, timeouts, connection errors) through the retries, asked
    to be left alone (``Retry-After``) longer than ``retry_after_max_s``, or the waits would have
    exceeded ``retry_budget_s``. Nothing is wrong with the request: keep the cursor and try later.
    ``retry_after`` is ReBound's last ``Retry-After`` in seconds, when it sent one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, status=status, body=body)
        self.retry_after = retry_after


class _Transient(ReboundUnavailableError):
    """A 5xx or 429: worth another attempt."""

    def __init__(self, status: int, body: str, retry_after: float | None):
        super().__init__(
            "ReBound is temporarily unavailable", status=status, body=body, retry_after=retry_after
        )


class FeedStalledError(ReboundError):
    """The event feed stopped advancing: a page carried events but gave back the cursor it was asked
    with, or said ``has_more`` while naming a cursor already read in this pass (or sent more than
    ``max_empty_pages`` empty pages in a row). Reading on would loop for ever; nothing was lost
    (the offending page is not yielded, so the stored cursor has not moved)."""

    def __init__(
        self, message: str, *, cursor: str | None, next_cursor: str | None, has_more: bool, events: int
    ):
        super().__init__(message)
        self.cursor, self.next_cursor, self.has_more, self.events = cursor, next_cursor, has_more, events


class FeedPageError(ReboundError):
    """A 200 answer to the event feed that is not a feed page (no ``events`` array, no
    ``next_cursor`` string or ``has_more`` boolean, or JSON whose structure does not close)."""


@dataclass(frozen=True)
class EventPage:
    events: list[Any]  # dicts, or msgspec.Raw (each event's bytes exactly as received) with raw=True
    next_cursor: str
    has_more: bool
    #: True when msgspec refused the page and it was split per event (``split_event_page``)
    split: bool = False


class _RawPage(msgspec.Struct):
    """A feed page whose events stay undecoded: the sync stores the bytes ReBound sent."""

    events: list[msgspec.Raw]
    next_cursor: str
    has_more: bool


_RAW_PAGE = msgspec.json.Decoder(_RawPage)


# --- splitting a page the decoder refuses ------------------------------------------------------------


class _ScanError(ValueError):
    def __init__(self, problem: str, at: int):
        super().__init__(f"{problem} at byte {at}")


_WS = frozenset(b" \t\r\n")
_STRING_STOP = re.compile(rb'["\\]')  # what ends or escapes inside a JSON string
_STRUCTURE = re.compile(rb'["{}\[\]]')  # what matters inside a container
_SCALAR_END = re.compile(rb"[,\]}\s]")  # what ends a number or literal
_CLOSER = {ord("{"): ord("}"), ord("["): ord("]")}


def _skip_ws(buf: bytes, i: int) -> int:
    n = len(buf)
    while i < n and buf[i] in _WS:
        i += 1
    return i


def _string_end(buf: bytes, i: int) -> int:
    """Index after the JSON string starting at ``buf[i] == '"'``. Bytes inside are not judged (a lone
    surrogate escape, bytes that are not UTF-8): only an unescaped quote ends the string."""
    j = i + 1
    while True:
        m = _STRING_STOP.search(buf, j)
        if m is None:
            raise _ScanError("unterminated string", i)
        k = m.start()
        if buf[k] == 0x5C:  # backslash: the next byte is escaped, whatever it is
            j = k + 2
            continue
        return k + 1


def _value_end(buf: bytes, i: int) -> int:
    """Index after the JSON value starting at ``buf[i]`` (brackets and strings matched; the
    contents of strings, numbers and literals are left to whoever decodes the value)."""
    if i >= len(buf):
        raise _ScanError("value expected", i)
    c = buf[i]
    if c == 0x22:  # "
        return _string_end(buf, i)
    if c in _CLOSER:
        stack = [_CLOSER[c]]
        j = i + 1
        while True:
            m = _STRUCTURE.search(buf, j)
            if m is None:
                raise _ScanError("unclosed " + chr(c), i)
            k = m.start()
            ch = buf[k]
            if ch == 0x22:
                j = _string_end(buf, k)
            elif ch in _CLOSER:
                stack.append(_CLOSER[ch])
                j = k + 1
            else:
                if stack.pop() != ch:
                    raise _ScanError("mismatched " + chr(ch), k)
                j = k + 1
                if not stack:
                    return j
    if c in b",:]}":
        raise _ScanError("value expected", i)
    m = _SCALAR_END.search(buf, i)
    return m.start() if m else len(buf)


def split_event_page(buf: bytes) -> tuple[list[bytes], dict[str, bytes]]:
    """Split a feed page into the exact bytes of each element of its ``events`` array, and the
    bytes of its other top-level values by key, without decoding the events.

    This is the fallback for a page that msgspec refuses as a whole: it matches brackets and
    strings (a quote ends a string unless escaped), so an event holding a lone surrogate escape
    or bytes that are not UTF-8 comes out byte for byte. Raises ValueError for a page whose
    structure does not close or that has no ``events`` array."""
    buf = bytes(buf)
    i = _skip_ws(buf, 0)
    if i >= len(buf) or buf[i] != 0x7B:
        raise _ScanError("a JSON object expected", i)
    i = _skip_ws(buf, i + 1)
    events: list[bytes] | None = None
    fields: dict[str, bytes] = {}
    if i < len(buf) and buf[i] == 0x7D:
        i += 1
    else:
        while True:
            if i >= len(buf) or buf[i] != 0x22:
                raise _ScanError("a key expected", i)
            end = _string_end(buf, i)
            try:
                key = json.loads(buf[i:end])
            except ValueError as exc:
                raise _ScanError("unreadable key", i) from exc
            i = _skip_ws(buf, end)
            if i >= len(buf) or buf[i] != 0x3A:
                raise _ScanError("':' expected", i)
            i = _skip_ws(buf, i + 1)
            if key in fields or (key == "events" and events is not None):
                raise _ScanError(f"key {key!r} given twice", i)
            if key == "events":
                if i >= len(buf) or buf[i] != 0x5B:
                    raise _ScanError("'events' is not an array", i)
                events = []
                i = _skip_ws(buf, i + 1)
                if i < len(buf) and buf[i] == 0x5D:
                    i += 1
                else:
                    while True:
                        end = _value_end(buf, i)
                        events.append(buf[i:end])
                        i = _skip_ws(buf, end)
                        if i < len(buf) and buf[i] == 0x2C:
                            i = _skip_ws(buf, i + 1)
                        elif i < len(buf) and buf[i] == 0x5D:
                            i += 1
                            break
                        else:
                            raise _ScanError("',' or ']' expected in events", i)
            else:
                end = _value_end(buf, i)
                fields[key] = buf[i:end]
                i = end
            i = _skip_ws(buf, i)
            if i < len(buf) and buf[i] == 0x2C:
                i = _skip_ws(buf, i + 1)
            elif i < len(buf) and buf[i] == 0x7D:
                i += 1
                break
            else:
                raise _ScanError("',' or '}' expected", i)
    if _skip_ws(buf, i) != len(buf):
        raise _ScanError("data after the page", i)
    if events is None:
        raise _ScanError("no 'events' array", 0)
    return events, fields


def _decode_event(data: bytes) -> Any:
    """One event for ``raw=False`` after the fast path refused the page: msgspec, else the standard
    library (it reads lone surrogate escapes), else the bytes themselves as ``msgspec.Raw``."""
    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass
    try:
        return json.loads(data)
    except ValueError:  # UnicodeDecodeError included
        return msgspec.Raw(data)


def decode_event_page(content: bytes, *, raw: bool) -> EventPage:
    """A feed page from the answer's bytes.

    Fast path: msgspec decodes the whole page (with ``raw=True`` each event stays the exact bytes
    received, as ``msgspec.Raw``). When msgspec refuses the page (a lone surrogate escape such as
    ``"\\ud800"``, bytes that are not UTF-8, an event that is not valid JSON), the page is split into
    per-event byte slices (``split_event_page``) so one bad event never costs the page: with
    ``raw=True`` every event is still its exact bytes; with ``raw=False`` each is decoded on its own,
    and one that cannot be decoded comes back as ``msgspec.Raw``. A page whose own fields are
    wrong raises FeedPageError."""
    try:
        if raw:
            body = _RAW_PAGE.decode(content)
            return EventPage(body.events, body.next_cursor, body.has_more)
        payload = msgspec.json.decode(content)
        if (
            isinstance(payload, dict)
            and isinstance(payload.get("events"), list)
            and isinstance(payload.get("next_cursor"), str)
            and isinstance(payload.get("has_more"), bool)
        ):
            return EventPage(payload["events"], payload["next_cursor"], payload["has_more"])
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
        pass
    try:
        slices, fields = split_event_page(content)
        next_cursor = msgspec.json.decode(fields["next_cursor"], type=str)
        has_more = msgspec.json.decode(fields["has_more"], type=bool)
    except KeyError as exc:
        raise FeedPageError(
            f"ReBound sent an event page that is not a feed page: no {exc.args[0]!r}",
            body=content[:500].decode("utf-8", "replace"),
        ) from None
    except (ValueError, msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise FeedPageError(
            f"ReBound sent an event page that is not a feed page: {exc}",
            body=content[:500].decode("utf-8", "replace"),
        ) from exc
    events = [msgspec.Raw(e) for e in slices] if raw else [_decode_event(e) for e in slices]
    return EventPage(events, next_cursor, has_more, split=True)
