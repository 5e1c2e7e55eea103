"""pytest imports test files by basename (no packages under tests/, rootdir-relative "prepend" import mode):
two test files of the same name in different folders stop the whole run at collection ("import file
mismatch"), although each passes alone. tests/browser and tests/integration both had
test_console_finance_runs.py."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_name_is_unique():
    names = Counter(p.name for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)
    assert [n for n, c in names.items() if c > 1 and n != "conftest.py"] == []
