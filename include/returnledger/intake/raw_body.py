"""Screening a raw delivery's bytes for what PostgreSQL's jsonb can hold: U+0000 and lone surrogate
escapes become visible literal text, the exact bytes are kept beside the payload, and bytes that are not
UTF-8 are kept as bytes only. Nothing is dropped: the event is still landed and, if unreadable, reported.
"""

from __future__ import annotations

import re

# a JSON \u0000 escape (one not itself escaped): PostgreSQL's jsonb cannot hold U+0000
_NUL_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")
# JSON escapes read left to right, so an escaped backslash followed by "u0000" is never taken for an escape
_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)


def storable(body: bytes) -> bytes:
    """The payload as received, except that a \\u0000 escape becomes the literal text ``\\u0000``:
    jsonb refuses U+0000, and one such event must not stop the whole feed."""
    return _NUL_ESCAPE.sub(rb"\1\\\\u0000", body) if b"\\u0000" in body else body


def screen_body(body: bytes) -> tuple[bytes | None, bytes | None, str | None]:
    """How one delivery is stored: (what the jsonb payload column gets, the exact bytes to keep beside it,
    why the delivery cannot be read as an event).

    Nearly every event takes the first line: valid UTF-8 without escapes jsonb refuses is stored as it is.
    Bytes that are not UTF-8 are kept as bytes only (no payload). A \\u0000 escape or a lone surrogate
    escape (``\\ud800``, no character at all) becomes visible literal text in the payload, and the exact
    bytes are kept too; a lone surrogate also makes the event unreadable (INVALID_EVENT).
    """
    if not body.isascii():
        try:
            body.decode()
        except UnicodeDecodeError as exc:
            return None, body, f"not valid UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start})"
    if b"\\u" not in body:
        return body, None, None
    spans: list[tuple[int, int]] = []
    lone: list[str] = []
    high = None
    for m in _ESCAPE.finditer(body):
        code = m.group(1)
        cp = int(code, 16) if code is not None else -1
        if high is not None:
            if 0xDC00 <= cp <= 0xDFFF and m.start() == high.end():
                high = None
                continue  # a surrogate pair: one character
            spans.append(high.span())
            lone.append(high.group(1).decode())
            high = None
        if 0xD800 <= cp <= 0xDBFF:
            high = m
        elif 0xDC00 <= cp <= 0xDFFF:
            spans.append(m.span())
            lone.append(code.decode())
        elif cp == 0:
            spans.append(m.span())
    if high is not None:
        spans.append(high.span())
        lone.append(high.group(1).decode())
    if not spans:
        return body, None, None
    out, last = bytearray(), 0
    for start, end in sorted(spans):
        out += body[last:start] + b"\\" + body[start:end]  # "\\ud800": the escape as literal text
        last = end
    out += body[last:]
    problem = None
    if lone:
        shown = ", ".join(dict.fromkeys(f"\\u{c.lower()}" for c in lone))
        problem = f"lone surrogate escape {shown} (not a character; no database text can hold it)"
    return bytes(out), body, problem
