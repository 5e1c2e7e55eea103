"""The exception-type registry (returnledger.exception_types) is the one place a type is described:
owners.yaml and the operating guide agree with it, the CLI and the console offer the same actions, the
hold rules come from it, a screening check cannot quarantine into a type the same run would release, and
the four types issue 23 counted are named in at most two Python files of the package."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from returnledger import exception_types as et
from returnledger.exception_types import ACTIONS, KINDS, Holds, Release

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "include" / "returnledger"


def test_the_registry_is_consistent():
    assert et.registry_problems() == []
    assert list(et.ExceptionType) == list(KINDS)
    # the table is keyed by the static enum (so mypy sees every member), one entry per member
    assert all(type(code) is et.ExceptionType for code in KINDS)


def test_owners_yaml_names_exactly_the_registry_types():
    from returnledger.reference.owners import default_owners

    assert set(default_owners()) == set(KINDS)


def test_the_operating_guide_table_is_generated_from_the_registry():
    from returnledger_dev.exception_guide import GUIDE, with_table

    text = GUIDE.read_text()
    assert with_table(text) == text, "run: python -m returnledger_dev.exception_guide"
    # the hand-written "what to do" table covers the same types, each once
    start = text.index("What to do, type by type:")
    prose = re.findall(r"^\| \*\*([A-Z_]+)\*\* \|", text[start:], re.M)
    assert sorted(prose) == sorted(KINDS)


def test_a_stale_guide_is_caught(monkeypatch):
    from returnledger_dev.exception_guide import GUIDE, with_table

    text = GUIDE.read_text()
    changed = dataclasses.replace(KINDS["DARK_RETURN"], actions=("resolve",))
    monkeypatch.setitem(KINDS, "DARK_RETURN", changed)
    assert with_table(text) != text


@pytest.mark.parametrize(
    "name", ["EVENT_CONFLICT", "INVALID_RETURN_ORDER", "UNMAPPED_REASON_CODE", "OUT_OF_SEQUENCE"]
)
def test_a_type_is_named_in_at_most_two_python_files(name):
    """Issue 23's measure: before the registry these names were in 11, 9, 6 and 4 files."""
    files = [
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if re.search(rf"\b{name}\b", p.read_text(encoding="utf-8"))
    ]
    assert len(files) <= 2, files
    assert "exception_types.py" in files


def test_hold_rules_are_read_from_the_registry():
    assert et.holding_types() == {"UNMAPPED_REASON_CODE", "SKU_MISMATCH", "OUT_OF_SEQUENCE"}
    assert et.blocking_types(Holds.LINE) == {"UNMAPPED_REASON_CODE", "SKU_MISMATCH"}
    assert et.blocking_types(Holds.RETURN) == {"INVALID_RETURN_ORDER"}
    assert et.replay_only_types() == {"EVENT_CONFLICT", "INVALID_RETURN_ORDER", "SYNC_STALLED"}
    from returnledger.ledger.holds import blocked_sql, hold_subject

    assert "'UNMAPPED_REASON_CODE'" in blocked_sql() and "'OUT_OF_SEQUENCE'" not in blocked_sql()
    assert hold_subject("INVALID_RETURN_ORDER", "RB-1", 2, "ev") == "order:RB-1"
    assert hold_subject("SKU_MISMATCH", "RB-1", 2, "ev") == "RB-1|2"
    assert hold_subject("EVENT_CONFLICT", "RB-1", 2, "ev-9") == "event:ev-9"
    assert hold_subject("SYNC_STALLED", "RB-1", None, "ev") == "order-fetch:RB-1"


def test_a_new_blocking_type_blocks_its_line_in_apply(monkeypatch):
    """Adding a holding type to the registry is all ``apply`` needs to keep its lines waiting."""
    from returnledger.ledger.holds import blocked_sql

    monkeypatch.setitem(KINDS, "LABEL_MISSING", _throwaway())
    assert "'LABEL_MISSING'" in blocked_sql()
    assert et.screening_outcome("LABEL_MISSING") == "hold"


def test_the_silent_trap_cannot_be_built(monkeypatch):
    """A quarantining check whose type the same run would release (issue 23's silent trap) is refused
    when the suite is built, not discovered in production."""
    from returnledger.screening.suite import build_checks

    types = {c.exception_type for c in build_checks()}  # today's suite passes
    assert {et.screening_outcome(t) for t in types} == {"refuse", "hold"}
    for code in ("OUT_OF_SEQUENCE", "DARK_RETURN", "QUANTITY_MISMATCH"):
        with pytest.raises(ValueError, match="cannot be raised by a screening check"):
            et.screening_outcome(code)
    # a type the suite uses that stops holding (or never did): the suite refuses to build
    loose = dataclasses.replace(
        KINDS["SKU_MISMATCH"], holds=Holds.LINE, released_by=Release.EARLIER_EVENT, released_when_sql=None
    )
    monkeypatch.setitem(KINDS, "SKU_MISMATCH", loose)
    with pytest.raises(ValueError, match="SKU_MISMATCH cannot be raised by a screening check"):
        build_checks()


def test_cli_and_console_offer_the_same_actions():
    pytest.importorskip("fastapi")
    from fastapi.routing import APIRoute

    from returnledger.cli import exceptions as cli
    from returnledger.console.app import create_console_app

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    sub = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices["exceptions"]
    commands = set(next(a for a in sub._subparsers._group_actions).choices) - {"list", "show"}
    assert commands == set(ACTIONS)
    app = create_console_app(dsn_provider=lambda: "postgresql://unused")
    posted = {
        r.path.rsplit("/", 1)[1]
        for r in app.routes
        if isinstance(r, APIRoute) and "POST" in r.methods and r.path.startswith("/exceptions/")
    }
    assert posted == set(et.CONSOLE_PATHS.values())
    assert set(et.CONSOLE_PATHS) == set(ACTIONS)
    # and every type's actions are ones both offer
    assert all(set(k.actions) <= set(ACTIONS) for k in KINDS.values())


def _throwaway() -> et.ExceptionKind:
    return et.ExceptionKind(
        "LABEL_MISSING",
        et.Subject.LINE,
        "the parcel came without its returns label",
        Holds.LINE,
        Release.CLOSE,
        "{return_id}|{line}",
    )
