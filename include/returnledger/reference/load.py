"""Loading reference data: the seed files (include/reference/) or a scenario's blocks, all read and
checked before anything is written, then upserted in one transaction.

Loading is an upsert: rows named in the files win, rows that are not (mappings and SKUs added by
operators) are left alone, and reloading the same files changes nothing. (A scenario's reference blocks and
operations are loaded by the dev tools, ``returnledger_dev.scenarios.reference``.)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from returnledger.reference.change import (
    OWNERS_FILE,
    POLICY_FILE,
    REASON_CODES_FILE,
    REFERENCE_LOCK,
    default_folder,
)
from returnledger.reference.mappings import (
    read_reason_codes,
    write_mappings,
)
from returnledger.reference.owners import read_owners, write_owners
from returnledger.reference.policy import read_policy, write_policy
from returnledger.store.db import unit_of_work


def load_reference(dsn, folder: Path | None = None, *, at: datetime, actor: str = "reference-loader") -> dict:
    """Upsert the seed files into the ledger; returns how many rows of each kind changed.

    All files are read and validated before anything is written, in one transaction.
    """
    folder = Path(folder) if folder else default_folder()
    mappings = read_reason_codes(folder / REASON_CODES_FILE)
    policy = read_policy(folder / POLICY_FILE)
    owners = read_owners(folder / OWNERS_FILE)
    with unit_of_work(dsn, lock=REFERENCE_LOCK) as conn:
        return write_reference(
            conn, mappings, policy, owners, at=at, actor=actor, why=f"loaded from {REASON_CODES_FILE}"
        )


def write_reference(conn, mappings: Mapping, policy, owners, *, at: datetime, actor: str, why: str) -> dict:
    """Write the reason mappings (all active), the disposition policy and the owner teams; their counts."""
    n_map = write_mappings(conn, {r: (c, True) for r, c in mappings.items()}, at=at, actor=actor, why=why)
    n_disp, n_set = write_policy(conn, policy, at=at, actor=actor)
    n_own = write_owners(conn, owners, at=at, actor=actor)
    return {
        "reason_mappings": n_map,
        "disposition_policy": n_disp,
        "policy_settings": n_set,
        "owner_teams": n_own,
    }
