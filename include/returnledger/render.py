"""The one template layer: every HTML this project writes (console pages, digests, the month-end report,
notification mails) is a Jinja template in ``returnledger/templates`` rendered through ``render``.

Autoescaping is on for every template. ``mail=True`` also writes braces in values as entities: Airflow
renders a notifier's fields with Jinja once more when it sends them, and a brace in a customer's text must
not be read as template syntax there.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import Any

import jinja2
from markupsafe import Markup, escape

from returnledger.exception_types import CONSOLE_PATHS, KINDS
from returnledger.money import money_text


def cell(value: Any) -> str:
    """A table cell's text: nothing for None, money to the penny, times to the minute, yes for True."""
    if value is None or value is False:
        return ""
    if value is True:
        return "yes"
    if isinstance(value, Decimal):
        return money_text(value)
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M}"
    return str(value)


#: how a cell starts when a spreadsheet would run it as a formula (=, +, -, @, a tab or CR), or when it
#: already starts with the apostrophe that marks text: such text from ReBound or Amazon gets one more
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def spreadsheet_text(text: str) -> str:
    """Text for a CSV people open in a spreadsheet: shown, never run. A leading apostrophe (the spreadsheet
    convention for "this is text") goes before a value that starts like a formula; ``from_spreadsheet_text``
    takes it off again, so readers that compare values get them exactly."""
    return "'" + text if text[:1] in FORMULA_START else text


def from_spreadsheet_text(text: str) -> str:
    """The value ``spreadsheet_text`` was given."""
    return text[1:] if text[:1] == "'" and text[1:2] and text[1:2] in FORMULA_START else text


def show(value: Any) -> Any:
    """Payloads as indented JSON; everything else as text (autoescaped)."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return Markup("<pre>{}</pre>").format(json.dumps(value, indent=2, sort_keys=True, default=str))
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return value


def columns(rows: list) -> list[str]:
    """The union of the keys of dict rows, in first-seen order (a table's header)."""
    cols: list[str] = []
    for row in rows:
        if isinstance(row, dict):
            cols.extend(k for k in row if k not in cols)
    return cols or ["value"]


def _brace_safe(text: str) -> str:
    return text.replace("{", "&#123;").replace("}", "&#125;")


def type_actions(code: Any) -> tuple[str, ...]:
    """The actions people have on an exception type (the exception-type registry's); resolve and dismiss
    for a type the registry does not know."""
    return KINDS[code].actions if code in KINDS else ("resolve", "dismiss")


@cache
def environment(mail: bool = False) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("returnledger", "templates"),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(cell=cell, show=show, columns=columns, money=money_text, actions=type_actions)
    env.globals["action_paths"] = CONSOLE_PATHS
    if mail:
        env.finalize = lambda v: Markup(_brace_safe(str(escape(v))))
    return env


def render(template: str, *, mail: bool = False, **context: Any) -> str:
    """Render ``templates/<template>`` with ``context``."""
    return environment(mail).get_template(template).render(**context)
