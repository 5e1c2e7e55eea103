"""Write the operating guide's exception-type table from the registry: ``python -m
returnledger_dev.exception_guide [--check]`` (docs/operating-guide.md, between the generated markers).
``--check`` only says whether the guide is current (exit 1 when not)."""

from __future__ import annotations

import sys
from pathlib import Path

from returnledger.exception_types import GUIDE_BEGIN, GUIDE_END, render_guide_table
from returnledger.reference.owners import default_owners

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operating-guide.md"


def with_table(text: str) -> str:
    """``text`` (the guide) with its generated table replaced by the registry's."""
    start, end = text.index(GUIDE_BEGIN), text.index(GUIDE_END) + len(GUIDE_END)
    return text[:start] + render_guide_table(default_owners()) + text[end:]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = GUIDE.read_text()
    new = with_table(text)
    if "--check" in argv:
        print("up to date" if new == text else f"{GUIDE} is out of date: run python -m {__spec__.name}")
        return 0 if new == text else 1
    GUIDE.write_text(new)
    print(f"wrote {GUIDE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
