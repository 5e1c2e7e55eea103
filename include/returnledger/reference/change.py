"""How reference data is kept: seed files under include/reference/, values checked before the
database's CHECKs (for a readable error), and one writer at a time.

Reference data (reason-code map, SKU catalogue, disposition policy, exception owners) lives in the
ledger so that the sync, the reconciliation and the exception queue read one version of it. Operators
change it through the functions of this subpackage (CLI or console), never by hand-edited SQL, so every
change lands in ``ledger.audit_log``. Every write takes an explicit ``at`` and ``actor``; nothing here
reads the clock.
"""

from __future__ import annotations

from pathlib import Path

from returnledger.store.db import project_root

REASON_CODES_FILE = "reason_codes.csv"
POLICY_FILE = "disposition_policy.yaml"
OWNERS_FILE = "owners.yaml"

#: advisory lock taken by every reference writer (``unit_of_work(..., lock=REFERENCE_LOCK)``), so that
#: two writers never compute their diffs against the same old state
REFERENCE_LOCK = 0x5E7B0E


def default_folder() -> Path:
    """The version-controlled seed files."""
    return project_root() / "include" / "reference"


def clean(value: object, what: str) -> str:
    """``value`` as stripped text; refuses nothing-at-all."""
    text = "" if value is None else str(value).strip()
    if not text:
        raise ValueError(f"{what} must not be empty")
    return text
