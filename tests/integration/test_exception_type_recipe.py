"""The exception-type recipe of docs/architecture.md ("How to add an exception type with its owner and
console action"), worked through with a throwaway type against a real ledger: a registry entry and an
owners.yaml entry are all it takes for the type to be stored (``ledger.exception_type``, seeded by
``migrate``), raised, hold its line, be listed with its owner and SLA, shown on the console with the
registry's actions, resolved from the CLI, and its line released. Also: the reference table that
replaced the CHECK lists (migration 0020)."""

from __future__ import annotations

import argparse
import re
import shutil
from datetime import UTC, datetime

import psycopg
import pytest

from returnledger import exception_types as et
from returnledger.store import migrate

pytestmark = pytest.mark.integration

NOW = datetime(2026, 10, 6, 12, 0, tzinfo=UTC)
NEW = "LABEL_MISSING"


def test_migrate_seeds_the_type_table_and_the_foreign_key_refuses_unknown_types(fresh_db):
    with psycopg.connect(fresh_db) as c:
        rows = dict(c.execute("SELECT code, holds FROM ledger.exception_type").fetchall())
        assert rows == {code: k.holds.value for code, k in et.KINDS.items()}
        assert migrate.seed_exception_types(c) == 0  # idempotent: nothing changes the second time
        checks = c.execute(
            "SELECT count(*) FROM pg_constraint WHERE conname IN"
            " ('exception_type_check', 'validation_failure_exception_type_check')"
        ).fetchone()[0]
        assert checks == 0
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            c.execute(
                "INSERT INTO ledger.exception (type, owner, subject_key, detail, opened_at, opened_by_batch)"
                " VALUES ('NO_SUCH_TYPE', 'x', 's', 'd', now(), 'b')"
            )
    assert migrate.migrate(fresh_db) == []  # a second migrate applies nothing and keeps the rows


@pytest.fixture
def throwaway_type(monkeypatch, tmp_path):
    """Step 1 and 2 of the recipe: the registry entry and the owners.yaml entry (a copy of the reference
    folder, so the repository's stays as it is)."""
    from returnledger.reference import owners

    folder = tmp_path / "reference"
    shutil.copytree(owners.default_folder(), folder)
    with (folder / "owners.yaml").open("a") as f:
        f.write(
            f"{NEW}:\n  owner: warehouse\n  sla_days: 4\n"
            "  what_to_do: Print the label again and stick it on the parcel, then resolve.\n"
        )
    monkeypatch.setattr(owners, "default_folder", lambda: folder)
    owners.default_owners.cache_clear()
    monkeypatch.setitem(
        et.KINDS,
        NEW,
        et.ExceptionKind(
            NEW,
            et.Subject.LINE,
            "the parcel came without its returns label",
            et.Holds.LINE,
            et.Release.CLOSE,
            "{return_id}|{line}",
        ),
    )
    yield NEW
    owners.default_owners.cache_clear()


def test_a_throwaway_type_flows_end_to_end(fresh_db, throwaway_type, capsys):
    from returnledger.cli import exceptions as exceptions_cli
    from returnledger.exception_queue.queries import list_exceptions
    from returnledger.exception_queue.queue import NewException, raise_exceptions
    from returnledger.ledger.holds import blocked_sql, hold_subject

    assert et.registry_problems() == []
    with psycopg.connect(fresh_db) as c:
        assert migrate.seed_exception_types(c) == 1  # step 3: `returnledger migrate` stores the new type
        c.execute(
            "INSERT INTO ledger.return_order (return_id, returns_notice, created_at) VALUES"
            " ('RB-7', 'RN-7', %s)",
            (NOW,),
        )
        c.execute(
            "INSERT INTO ledger.return_line (return_id, line, sku, reason, quantity_announced, state)"
            " VALUES ('RB-7', 1, 'SKU-KETTLE', 'DEFECTIVE', 1, 'ANNOUNCED')"
        )
        # raised (as a detector or a screening check raises it): owner from owners.yaml
        assert (
            raise_exceptions(
                c,
                [
                    NewException(
                        NEW,
                        hold_subject(NEW, "RB-7", 1, None),
                        "no label",
                        return_id="RB-7",
                        line=1,
                    )
                ],
                at=NOW,
                batch_id="returns_sync:2026-10-06",
            )
            == 1
        )
        (exception_id, owner) = c.execute(
            "SELECT exception_id, owner FROM ledger.exception WHERE type = %s", (NEW,)
        ).fetchone()
        assert owner == "warehouse"
        # the registry's hold rule: while it is open, apply keeps the line's held events waiting
        assert ("RB-7", 1, NEW, "RB-7|1") in c.execute(blocked_sql()).fetchall()
        # the queue lists it with its SLA from owners.yaml
        (row,) = list_exceptions(c, type=NEW, as_of=NOW)
        assert (row["owner"], row["sla_days"], row["status"]) == ("warehouse", 4, "open")

    # the console shows it with the registry's actions (resolve, dismiss; no mapping or SKU form)
    html = _console_page(fresh_db, exception_id)
    assert f"{NEW}" in html and 'id="resolve-form"' in html and 'id="dismiss-form"' in html
    assert 'id="mapping-form"' not in html and 'id="pick-form"' not in html

    # the CLI lists it and resolves it
    parser = argparse.ArgumentParser(prog="returnledger")
    exceptions_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["exceptions", "list", "--dsn", fresh_db, "--type", NEW])
    assert args.func(args) == 0 and "1 exception(s)" in capsys.readouterr().out
    args = parser.parse_args(
        ["exceptions", "resolve", str(exception_id), "--why", "label reprinted", "--dsn", fresh_db,
         "--actor", "wendy"]
    )  # fmt: skip
    assert args.func(args) == 0
    with psycopg.connect(fresh_db) as c:
        assert c.execute(
            "SELECT status, resolved_by FROM ledger.exception WHERE exception_id = %s", (exception_id,)
        ).fetchone() == ("resolved", "wendy")
        assert all(r[2] != NEW for r in c.execute(blocked_sql()))  # the line goes on at the next sync


def _console_page(dsn: str, exception_id: int) -> str:
    """The exception's console page as an Op sees it (Airflow's simple auth manager, as in
    tests/plugins/test_console_auth.py)."""
    pytest.importorskip("airflow.api_fastapi.auth.managers.simple.simple_auth_manager")
    from airflow.api_fastapi import app as airflow_app
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.models.revoked_token import RevokedToken
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from returnledger.console.app import create_console_app
    from returnledger.console.auth import AirflowAuth

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "recipe-test-secret-not-for-production-" + "x" * 40)
        manager = SimpleAuthManager()
        mp.setattr(airflow_app._AuthManagerState, "instance", manager)
        mp.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti, **kw: False))
        token = manager.generate_jwt(
            SimpleAuthManagerUser(username="olivia.ops", role="OP"), expiration_time_in_seconds=600
        )
        root = FastAPI()
        root.mount("/rl", create_console_app(dsn_provider=lambda: dsn, auth=AirflowAuth(), clock=lambda: NOW))
        with TestClient(root, base_url="http://airflow.test") as client:
            r = client.get(f"/rl/exceptions/{exception_id}", cookies={"_token": token})
            assert r.status_code == 200, r.text
            listed = client.get(f"/rl/?type={NEW}", cookies={"_token": token})
            assert listed.status_code == 200
            assert re.search(rf'data-exception-id="{exception_id}"', listed.text)
            return r.text


def test_the_type_recipe_names_the_files_the_type_touched():
    """The recipe names what the throwaway type above needed (registry, owners.yaml, the guide), the
    files a new action needs, and only files that exist."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    text = (root / "docs" / "architecture.md").read_text()
    title = "How to add an exception type with its owner and console action"
    m = re.search(rf"^### {re.escape(title)}\n(.*?)(?=^#|\Z)", text, re.S | re.M)
    assert m, "docs/architecture.md has no exception-type recipe"
    named = set(re.findall(r"`((?:include|dags|dev|tests|docs)/[\w./-]+\.(?:py|yaml|md|sql|html))`", m[1]))
    touched = {
        "include/returnledger/exception_types.py",
        "include/reference/owners.yaml",
        "docs/operating-guide.md",
        "tests/integration/test_exception_type_recipe.py",
    }
    new_action = {
        "include/returnledger/exception_queue/actions.py",
        "include/returnledger/cli/exceptions.py",
        "include/returnledger/console/pages.py",
        "include/returnledger/templates/console/detail.html",
    }
    assert touched | new_action <= named, sorted((touched | new_action) - named)
    assert all((root / f).exists() for f in named), sorted(f for f in named if not (root / f).exists())
