"""Reference data on a real PostgreSQL: seed loading, operator actions, history and audit."""

from __future__ import annotations

import argparse
import csv
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from returnledger.cli import reference as reference_cli
from returnledger.models import Disposition, ExceptionType
from returnledger.reference.change import default_folder
from returnledger.reference.load import load_reference
from returnledger.reference.mappings import active_mappings, add_reason_mapping, deactivate_reason_mapping
from returnledger.reference.owners import owner_teams, read_owners
from returnledger.reference.policy import Policy, load_policy, read_policy
from returnledger.reference.skus import add_sku
from returnledger.store import db
from returnledger_dev.scenarios.reference import apply_operation, load_scenario_reference

pytestmark = pytest.mark.integration

AT = datetime(2026, 10, 1, 6, tzinfo=UTC)
FOLDER = default_folder()
#: the owner table of include/reference/owners.yaml
DESIGN_OWNERS = {
    "UNMAPPED_REASON_CODE": "operations",
    "SKU_MISMATCH": "operations",
    "INVALID_EVENT": "integration",
    "OUT_OF_SEQUENCE": "integration",
    "QUANTITY_MISMATCH": "warehouse",
    "AMAZON_REJECTED": "integration",
    "CREDIT_MISSING": "finance",
    "DARK_RETURN": "warehouse",
    "CREDIT_MISMATCH": "finance",
    "SYNC_STALLED": "integration",
    "EVENT_CONFLICT": "integration",
    "INVALID_RETURN_ORDER": "integration",
}


def rows(dsn, query, params=()):
    with db.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def count(dsn, table):
    return rows(dsn, f"SELECT count(*) FROM ledger.{table}")[0][0]  # table names are test constants


@pytest.fixture
def generator(generated_month):
    """The scenario generator's rules (its reason mapping and credit policy, as its months state them) and
    its months: the reference files must agree with the rules it encodes."""
    month, _ = generated_month(200, 7)
    return SimpleNamespace(
        REASONS={r["rebound_reason"]: r["amazon_reason"] for r in month["reason_codes"]},
        DISPOSITION_CREDIT=month["policy"]["credit"],
        generate=lambda returns, seed, faults: generated_month(returns, seed, faults),
    )


def test_seed_files_match_the_scenario_rules(generator):
    with open(FOLDER / "reason_codes.csv", newline="") as f:
        assert {r["rebound_reason"]: r["amazon_reason"] for r in csv.DictReader(f)} == generator.REASONS
    policy = read_policy(FOLDER / "disposition_policy.yaml")
    assert policy == Policy.from_dict(
        {"sellable_grades": ["A"], "credit": generator.DISPOSITION_CREDIT, "credit_window_days": 7}
    )
    owners = read_owners(FOLDER / "owners.yaml")
    assert {t: o.owner for t, o in owners.items()} == DESIGN_OWNERS
    assert all(o.what_to_do and "\n" not in o.what_to_do for o in owners.values())


def test_load_reference_fills_the_ledger_and_reloading_changes_nothing(fresh_db):
    first = load_reference(fresh_db, at=AT)
    assert first == {
        "reason_mappings": 10,
        "disposition_policy": len(Disposition),
        "policy_settings": 2,
        "owner_teams": len(ExceptionType),
    }
    history = rows(
        fresh_db,
        "SELECT rebound_reason, old_amazon_reason, new_amazon_reason, changed_by"
        " FROM ledger.reason_mapping_history ORDER BY rebound_reason",
    )
    assert len(history) == 10 and ("FAULTY", None, "CR-DEFECTIVE", "reference-loader") in history
    audit_before = count(fresh_db, "audit_log")
    assert audit_before == 10 + len(Disposition) + 2 + len(ExceptionType)

    again = load_reference(fresh_db, at=AT + timedelta(days=1), actor="someone-else")
    assert again == {"reason_mappings": 0, "disposition_policy": 0, "policy_settings": 0, "owner_teams": 0}
    assert count(fresh_db, "reason_mapping_history") == 10
    assert count(fresh_db, "audit_log") == audit_before
    assert rows(fresh_db, "SELECT DISTINCT updated_at, updated_by FROM ledger.reason_mapping") == [
        (AT, "reference-loader")
    ]

    with db.connect(fresh_db) as conn:
        assert load_policy(conn) == read_policy(FOLDER / "disposition_policy.yaml")
        assert active_mappings(conn)["CHANGED_MIND"] == "CR-UNWANTED_ITEM"
        owners = owner_teams(conn)
    assert owners["CREDIT_MISSING"].owner == "finance" and owners["CREDIT_MISSING"].sla_days > 0


def test_a_changed_seed_file_is_applied_and_recorded(fresh_db, tmp_path):
    load_reference(fresh_db, at=AT)
    folder = tmp_path / "reference"
    folder.mkdir()
    for name in ("owners.yaml",):
        (folder / name).write_text((FOLDER / name).read_text())
    (folder / "reason_codes.csv").write_text(
        (FOLDER / "reason_codes.csv")
        .read_text()
        .replace("FAULTY,CR-DEFECTIVE", "FAULTY,CR-QUALITY_UNACCEPTABLE")
    )
    policy = yaml.safe_load((FOLDER / "disposition_policy.yaml").read_text())
    policy["credit"]["REFURBISH"] = 0.5
    policy["credit_window_days"] = 10
    (folder / "disposition_policy.yaml").write_text(yaml.safe_dump(policy))

    later = AT + timedelta(days=3)
    out = load_reference(fresh_db, folder, at=later, actor="finance-lead")
    assert out == {"reason_mappings": 1, "disposition_policy": 1, "policy_settings": 1, "owner_teams": 0}
    assert rows(
        fresh_db,
        "SELECT old_amazon_reason, new_amazon_reason, changed_at, changed_by"
        " FROM ledger.reason_mapping_history WHERE rebound_reason = 'FAULTY'"
        " ORDER BY change_id",
    ) == [
        (None, "CR-DEFECTIVE", AT, "reference-loader"),
        ("CR-DEFECTIVE", "CR-QUALITY_UNACCEPTABLE", later, "finance-lead"),
    ]
    audit = rows(
        fresh_db,
        "SELECT action, subject, detail FROM ledger.audit_log WHERE at = %s ORDER BY subject",
        (later,),
    )
    assert [(a, s) for a, s, _ in audit] == [
        ("disposition_policy.set", "disposition:REFURBISH"),
        ("reason_mapping.set", "reason:FAULTY"),
        ("policy_setting.set", "setting:credit_window_days"),
    ]
    assert audit[2][2] == {"old": 7, "new": 10}
    with db.connect(fresh_db) as conn:
        policy = load_policy(conn)
    assert policy.credit_fraction("REFURBISH") == Decimal("0.5") and policy.credit_window_days == 10


def test_operator_mapping_actions_keep_history(fresh_db):
    load_reference(fresh_db, at=AT)
    t1, t2, t3 = (AT + timedelta(hours=h) for h in (1, 2, 3))
    assert add_reason_mapping(
        fresh_db, "GIFT_UNWANTED", "CR-UNWANTED_ITEM", at=t1, actor="olga", why="customer gift returns"
    )
    assert not add_reason_mapping(fresh_db, "GIFT_UNWANTED", "CR-UNWANTED_ITEM", at=t2, actor="olga")
    assert add_reason_mapping(fresh_db, "GIFT_UNWANTED", "CR-OTHER", at=t2, actor="sam", why="remap")
    assert deactivate_reason_mapping(fresh_db, "GIFT_UNWANTED", at=t3, actor="sam", why="retired")
    assert not deactivate_reason_mapping(fresh_db, "GIFT_UNWANTED", at=t3, actor="sam")
    with db.connect(fresh_db) as conn:
        assert "GIFT_UNWANTED" not in active_mappings(conn)
    assert rows(
        fresh_db,
        "SELECT old_amazon_reason, new_amazon_reason, old_active, new_active, changed_by, why"
        " FROM ledger.reason_mapping_history WHERE rebound_reason = 'GIFT_UNWANTED'"
        " ORDER BY change_id",
    ) == [
        (None, "CR-UNWANTED_ITEM", None, True, "olga", "customer gift returns"),
        ("CR-UNWANTED_ITEM", "CR-OTHER", True, True, "sam", "remap"),
        ("CR-OTHER", "CR-OTHER", True, False, "sam", "retired"),
    ]
    assert [
        a
        for (a,) in rows(
            fresh_db,
            "SELECT action FROM ledger.audit_log WHERE subject = 'reason:GIFT_UNWANTED' ORDER BY audit_id",
        )
    ] == ["reason_mapping.set", "reason_mapping.set", "reason_mapping.deactivate"]
    # mapping it again reactivates it
    assert add_reason_mapping(fresh_db, "GIFT_UNWANTED", "CR-OTHER", at=t3, actor="olga")
    assert rows(
        fresh_db, "SELECT active FROM ledger.reason_mapping WHERE rebound_reason = 'GIFT_UNWANTED'"
    ) == [(True,)]
    with pytest.raises(LookupError):
        deactivate_reason_mapping(fresh_db, "NEVER_MAPPED", at=t3, actor="sam")


@pytest.mark.parametrize(
    "reason,code,message",
    [
        ("GIFT", "UNWANTED", "CR-"),
        ("GIFT", "cr-unwanted_item", "CR-"),
        ("GIFT", "CR-", "CR-"),
        ("", "CR-OTHER", "rebound_reason"),
        ("  ", "CR-OTHER", "rebound_reason"),
    ],
)
def test_invalid_mappings_are_refused_with_a_clear_error(fresh_db, reason, code, message):
    with pytest.raises(ValueError, match=message):
        add_reason_mapping(fresh_db, reason, code, at=AT, actor="olga")
    assert count(fresh_db, "reason_mapping") == 0 and count(fresh_db, "audit_log") == 0


def test_add_sku_adds_corrects_and_never_overwrites_the_ledgers_stock(fresh_db):
    assert add_sku(fresh_db, "NEW-1", "B0NEW00001", "15.00", 5, at=AT, actor="olga")
    assert not add_sku(fresh_db, "NEW-1", "B0NEW00001", Decimal("15"), 5, at=AT, actor="olga")
    with db.connect(fresh_db) as conn:  # a restock moved the stock since
        conn.execute("UPDATE ledger.sku SET available = 6 WHERE sku = 'NEW-1'")
        conn.commit()
    assert not add_sku(fresh_db, "NEW-1", "B0NEW00001", "15.00", 5, at=AT, actor="olga")  # a rerun
    assert add_sku(fresh_db, "NEW-1", "B0NEW00001", "16.50", 5, at=AT + timedelta(hours=1), actor="sam")
    assert rows(fresh_db, "SELECT asin, unit_cost, available, updated_by FROM ledger.sku") == [
        ("B0NEW00001", Decimal("16.50"), 6, "sam")
    ]
    audit = rows(
        fresh_db, "SELECT action, detail FROM ledger.audit_log WHERE subject = 'sku:NEW-1' ORDER BY audit_id"
    )
    assert [a for a, _ in audit] == ["sku.add", "sku.change"]
    assert audit[1][1]["old"]["unit_cost"] == "15.00" and audit[1][1]["new"]["unit_cost"] == "16.50"


@pytest.mark.parametrize(
    "sku,asin,cost,available,message",
    [
        ("S", "", "1.00", 1, "asin"),
        ("S", "B0", "-0.01", 1, ">= 0"),
        ("S", "B0", "abc", 1, "decimal"),
        ("S", "B0", "1.005", 1, "two decimals"),
        ("S", "B0", "1.00", -1, "available"),
        ("", "B0", "1.00", 1, "sku"),
        ("S", "B0", "NaN", 1, ">= 0"),
    ],
)
def test_invalid_skus_are_refused_with_a_clear_error(fresh_db, sku, asin, cost, available, message):
    with pytest.raises(ValueError, match=message):
        add_sku(fresh_db, sku, asin, cost, available, at=AT, actor="olga")
    assert count(fresh_db, "sku") == 0


def test_operator_actions_join_the_callers_transaction(fresh_db):
    with db.connect(fresh_db) as conn:
        add_reason_mapping(conn, "LATE", "CR-OTHER", at=AT, actor="olga")
        assert active_mappings(conn) == {"LATE": "CR-OTHER"}
        conn.rollback()  # the caller (e.g. resolving an exception) failed: nothing of it stays
    assert count(fresh_db, "reason_mapping") == 0 and count(fresh_db, "audit_log") == 0


def test_load_policy_refuses_to_guess_without_reference_data(fresh_db):
    with db.connect(fresh_db) as conn, pytest.raises(LookupError, match="reference load"):
        load_policy(conn)


def test_small_month_scenario_loads(fresh_db, scenarios_dir):
    scenario = json.loads((scenarios_dir / "small-month.json").read_text())
    out = load_scenario_reference(fresh_db, scenario, at=AT)
    assert out["skus"] == len(scenario["catalog"]) == count(fresh_db, "sku")
    with db.connect(fresh_db) as conn:
        assert active_mappings(conn) == {
            r["rebound_reason"]: r["amazon_reason"] for r in scenario["reason_codes"]
        }


def test_scenario_reference_and_operations(fresh_db, generator):
    scenario, _ = generator.generate(
        200, 7, False
    )  # the README's small generated month: both kinds of operation
    out = load_scenario_reference(fresh_db, scenario, at=AT)
    assert out == {
        "reason_mappings": len(scenario["reason_codes"]),
        "disposition_policy": len(Disposition),
        "policy_settings": 2,
        "owner_teams": len(ExceptionType),
        "skus": len(scenario["catalog"]),
    }
    assert load_scenario_reference(fresh_db, scenario, at=AT + timedelta(days=1)) == {
        "reason_mappings": 0,
        "disposition_policy": 0,
        "policy_settings": 0,
        "owner_teams": 0,
        "skus": 0,
    }
    catalog = {r[0]: r[1:] for r in rows(fresh_db, "SELECT sku, asin, unit_cost, available FROM ledger.sku")}
    for c in scenario["catalog"]:
        assert catalog[c["sku"]] == (c["asin"], Decimal(c["unit_cost"]), c["available"])
    with db.connect(fresh_db) as conn:
        assert load_policy(conn) == Policy.from_dict(scenario["policy"])

    ops = scenario["operations"]
    assert {o["action"] for o in ops} == {"add_reason_mapping", "add_sku"}
    for op in ops:
        assert apply_operation(fresh_db, op, at=datetime.fromisoformat(op["on"]).replace(tzinfo=UTC))
    with db.connect(fresh_db) as conn:
        mappings = active_mappings(conn)
    for op in ops:
        if op["action"] == "add_reason_mapping":
            assert mappings[op["rebound_reason"]] == op["amazon_reason"]
        else:
            assert catalog.get(op["sku"]) is None
            assert rows(fresh_db, "SELECT asin, available FROM ledger.sku WHERE sku = %s", (op["sku"],)) == [
                (op["asin"], op["available"])
            ]
    assert not any(apply_operation(fresh_db, op, at=AT) for op in ops)  # a rerun changes nothing


def test_a_refused_operator_action_does_not_stop_the_days_other_operations(fresh_db):
    """A resolve_over_receipt for a line with no over-receipt is refused with its reason; the mapping listed
    after it is still added (a scenario with such an operation stopped the whole demo on that day)."""
    from returnledger_dev.scenarios.reference import apply_operations

    ops = [
        {
            "on": "2026-11-13",
            "action": "resolve_over_receipt",
            "return_id": "RB-NONE",
            "line": 1,
            "quantity": 2,
        },
        {
            "on": "2026-11-13",
            "action": "add_reason_mapping",
            "rebound_reason": "LATE_X",
            "amazon_reason": "CR-OTHER",
        },
    ]
    refused = apply_operations(fresh_db, ops, at=AT)
    assert [(op["action"], "no open QUANTITY_MISMATCH" in why) for op, why in refused] == [
        ("resolve_over_receipt", True)
    ]
    with db.connect(fresh_db) as conn:
        assert active_mappings(conn)["LATE_X"] == "CR-OTHER"


def test_scenario_with_an_incomplete_policy_is_refused(fresh_db):
    bad = {
        "policy": {"sellable_grades": ["A"], "credit": {"RESTOCKED": 1.0}, "credit_window_days": 7},
        "reason_codes": [],
        "catalog": [],
    }
    with pytest.raises(ValueError, match="missing"):
        load_scenario_reference(fresh_db, bad, at=AT)
    assert count(fresh_db, "disposition_policy") == 0


def test_cli_commands(fresh_db, monkeypatch, capsys):
    monkeypatch.setenv(db.ENV_DSN, fresh_db)
    parser = argparse.ArgumentParser(prog="returnledger")
    reference_cli.register(parser.add_subparsers(dest="command", required=True))

    args = parser.parse_args(["reference", "load", "--at", "2026-10-01T06:00:00"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["reason_mappings"] == 10
    args = parser.parse_args(
        ["mapping", "add", "ARRIVED_LATE", "CR-OTHER", "--why", "ops call", "--actor", "olga"]
    )
    assert args.func(args) == 0
    args = parser.parse_args(["sku", "add", "NEW-9", "B0NEW9", "9.50", "3", "--actor", "olga"])
    assert args.func(args) == 0
    args = parser.parse_args(["mapping", "deactivate", "TOO_SMALL", "--actor", "olga"])
    assert args.func(args) == 0
    assert rows(
        fresh_db,
        "SELECT changed_by, why FROM ledger.reason_mapping_history WHERE rebound_reason = 'ARRIVED_LATE'",
    ) == [("olga", "ops call")]
    assert rows(fresh_db, "SELECT asin, unit_cost, available FROM ledger.sku WHERE sku = 'NEW-9'") == [
        ("B0NEW9", Decimal("9.50"), 3)
    ]
    assert rows(fresh_db, "SELECT at FROM ledger.audit_log WHERE subject = 'reason:FAULTY'") == [(AT,)]
    with pytest.raises(SystemExit):
        parser.parse_args(["sku", "add", "NEW-9", "B0NEW9", "9.50", "three"])
    capsys.readouterr()
    args = parser.parse_args(["mapping", "add", "ARRIVED_LATE", "UNWANTED", "--actor", "olga"])
    assert args.func(args) == 2 and "refused: amazon_reason" in capsys.readouterr().out


def test_default_folder_is_the_projects_reference_folder():
    assert Path(__file__).resolve().parents[2] / "include" / "reference" == FOLDER
    assert {p.name for p in FOLDER.iterdir()} >= {
        "reason_codes.csv",
        "disposition_policy.yaml",
        "owners.yaml",
    }
