"""The scenario loader: the shared files load, and each kind of broken file is named precisely."""

from __future__ import annotations

import copy
import itertools
import json
from datetime import datetime

import pytest

from returnledger_dev.sandbox.feed import feed_order
from returnledger_dev.sandbox.scenario import Scenario, load_scenario, load_scenario_dict
from returnledger_dev.sandbox.scenario_rules import ScenarioError


@pytest.fixture(scope="module")
def small_raw(scenarios_dir) -> dict:
    return json.loads((scenarios_dir / "small-month.json").read_text())


@pytest.mark.parametrize("name", ["small-month.json", "small-month-faults.json"])
def test_shared_small_months_load(scenarios_dir, name):
    path = scenarios_dir / name
    raw = json.loads(path.read_text())
    s = load_scenario(path)
    assert isinstance(s, Scenario)
    assert s.name == raw["name"]
    assert len(s.rebound.returns) == len(raw["rebound"]["returns"])
    assert [e.event_id for e in s.rebound.events] == [e["event_id"] for e in raw["rebound"]["events"]]
    assert s.rebound.invalid_events == raw["rebound"]["invalid_events"]  # kept raw, as written
    assert all(isinstance(e, dict) for e in s.rebound.invalid_events)
    assert len(s.amazon.returns) == len(raw["amazon"]["returns"])
    assert str(s.catalog[0].unit_cost) == raw["catalog"][0]["unit_cost"]
    assert s.run.from_.isoformat() == raw["run"]["from"]
    assert s.policy.credit["QUARANTINED"] is None and s.policy.credit["REJECTED"] == 0
    assert s.raw == raw  # the raw dict is what the simulators serve
    assert load_scenario_dict(path) == raw
    assert s.faults.rebound.error_rate == ((raw["faults"].get("rebound") or {}).get("error_rate") or 0)


def test_feed_order_counts_every_delivery(scenarios_dir):
    raw = json.loads((scenarios_dir / "small-month.json").read_text())
    feed = feed_order(load_scenario(scenarios_dir / "small-month.json"))
    dups = sum(1 for e in raw["rebound"]["events"] if e.get("duplicate"))
    assert dups > 0
    assert len(feed) == len(raw["rebound"]["events"]) + len(raw["rebound"]["invalid_events"]) + dups

    def t(e):
        return datetime.fromisoformat(e.get("delivered_at") or e["occurred_at"])

    assert all(t(a) <= t(b) for a, b in itertools.pairwise(feed))


def _index(raw: dict, kind: str) -> int:
    return next(i for i, e in enumerate(raw["rebound"]["events"]) if e["type"] == kind)


def _bad(raw):
    """Mutations of small-month.json and the exact message each must produce."""
    d = _index(raw, "DISPOSITIONED")
    r = _index(raw, "RECEIVED")
    sku1 = raw["catalog"][1]["sku"]
    ev5 = raw["rebound"]["events"][5]["event_id"]
    rid0 = raw["rebound"]["returns"][0]["return_id"]
    ar0 = raw["amazon"]["returns"][0]["amazon_return_id"]
    return [
        (
            "wrong format tag",
            lambda s: s.update(format="x"),
            "format: expected 'returns-scenario/1', got 'x'",
        ),
        ("missing top-level key", lambda s: s.pop("vendor"), "vendor: missing key"),
        (
            "missing event key",
            lambda s: s["rebound"]["events"][3].pop("occurred_at"),
            "rebound.events[3].occurred_at: missing key",
        ),
        (
            "missing event type",
            lambda s: s["rebound"]["events"][4].pop("type"),
            "rebound.events[4].type: missing key",
        ),
        (
            "missing line key",
            lambda s: s["rebound"]["returns"][2]["lines"][0].pop("sku"),
            "rebound.returns[2].lines[0].sku: missing key",
        ),
        (
            "bad event date",
            lambda s: s["rebound"]["events"][12].update(occurred_at="yesterday"),
            "rebound.events[12].occurred_at: not an ISO-8601 date ('yesterday')",
        ),
        (
            "bad run date",
            lambda s: s["run"].update({"from": "2026-13-01"}),
            "run.from: not an ISO-8601 date ('2026-13-01')",
        ),
        (
            "naive time",
            lambda s: s["rebound"]["events"][7].update(occurred_at="2026-10-02T10:00:00"),
            "rebound.events[7].occurred_at: no time zone ('2026-10-02T10:00:00')",
        ),
        (
            "unknown disposition in policy",
            lambda s: s["policy"]["credit"].update(SOLD=1.0),
            "policy.credit.SOLD: unknown disposition 'SOLD'",
        ),
        (
            "unknown disposition in event",
            lambda s: s["rebound"]["events"][d].update(disposition="BURNED"),
            f"rebound.events[{d}].disposition: unknown disposition 'BURNED'",
        ),
        (
            "unknown grade",
            lambda s: s["rebound"]["events"][d - 1].update(grade="Z"),
            f"rebound.events[{d - 1}].grade: unknown grade 'Z'",
        ),
        (
            "unknown event type",
            lambda s: s["rebound"]["events"][r].update(type="TELEPORTED"),
            f"rebound.events[{r}].type: unknown type 'TELEPORTED'",
        ),
        (
            "negative quantity",
            lambda s: s["rebound"]["events"][r].update(quantity=-1),
            f"rebound.events[{r}].quantity: Input should be greater than or equal to 0 (-1)",
        ),
        (
            "quantity as text",
            lambda s: s["rebound"]["events"][r].update(quantity="2"),
            f"rebound.events[{r}].quantity: Input should be a valid integer ('2')",
        ),
        ("unknown key", lambda s: s["catalog"][0].update(colour="red"), "catalog[0].colour: unknown key"),
        (
            "duplicate sku",
            lambda s: s["catalog"][3].update(sku=sku1),
            f"catalog[3].sku: duplicate id '{sku1}'",
        ),
        (
            "duplicate event id",
            lambda s: s["rebound"]["events"][9].update(event_id=ev5),
            f"rebound.events[9].event_id: duplicate id '{ev5}'",
        ),
        (
            "duplicate return id",
            lambda s: s["rebound"]["returns"][4].update(return_id=rid0),
            f"rebound.returns[4].return_id: duplicate id '{rid0}'",
        ),
        (
            "duplicate amazon return id",
            lambda s: s["amazon"]["returns"][6].update(amazon_return_id=ar0),
            f"amazon.returns[6].amazon_return_id: duplicate id '{ar0}'",
        ),
        (
            "event for an unknown return",
            lambda s: s["rebound"]["events"][2].update(return_id="RB-NOPE"),
            "rebound.events[2].return_id: unknown return 'RB-NOPE'",
        ),
        (
            "invalid event without delivery time",
            lambda s: s["rebound"]["invalid_events"][0].pop("delivered_at"),
            "rebound.invalid_events[0].delivered_at: missing key",
        ),
        (
            "unknown operation",
            lambda s: s["operations"][0].update(action="delete_everything"),
            "operations[0].action: unknown action 'delete_everything'",
        ),
        (
            "bad fault rate",
            lambda s: s.update(faults={"rebound": {"error_rate": 2}}),
            "faults.rebound.error_rate: Input should be less than or equal to 1 (2)",
        ),
        (
            "bad label",
            lambda s: s["amazon"]["returns"][1].update(label="UPS"),
            "amazon.returns[1].label: Input should be 'REBOUND' or 'APRL' ('UPS')",
        ),
    ]


CASES = [
    "wrong format tag",
    "missing top-level key",
    "missing event key",
    "missing event type",
    "missing line key",
    "bad event date",
    "bad run date",
    "naive time",
    "unknown disposition in policy",
    "unknown disposition in event",
    "unknown grade",
    "unknown event type",
    "negative quantity",
    "quantity as text",
    "unknown key",
    "duplicate sku",
    "duplicate event id",
    "duplicate return id",
    "duplicate amazon return id",
    "event for an unknown return",
    "invalid event without delivery time",
    "unknown operation",
    "bad fault rate",
    "bad label",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_file_names_path_and_problem(small_raw, tmp_path, case):
    raw = copy.deepcopy(small_raw)
    cases = {name: (mutate, message) for name, mutate, message in _bad(raw)}
    assert set(cases) == set(CASES)
    mutate, message = cases[case]
    mutate(raw)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert str(err.value).startswith(message), str(err.value)


def test_not_json_and_not_an_object(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(ScenarioError, match="not valid JSON"):
        load_scenario(p)
    p.write_text("[1, 2]")
    with pytest.raises(ScenarioError, match=r"\(root\): expected a JSON object, got list"):
        load_scenario(p)
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.json")


def test_many_problems_are_counted(small_raw):
    raw = copy.deepcopy(small_raw)
    for e in raw["rebound"]["events"][:3]:
        e["occurred_at"] = "soon"
    with pytest.raises(
        ScenarioError, match=r"^rebound\.events\[0\]\.occurred_at: .*\(and 2 more problems\)$"
    ):
        Scenario.from_dict(raw)


def test_generated_scenario_loads_and_matches_the_file(generated_scenario):
    path = generated_scenario(2000, 5, faults=True)
    raw = json.loads(path.read_text())
    s = load_scenario(path)
    assert len(s.rebound.events) == len(raw["rebound"]["events"])
    assert s.faults.rebound.error_rate == 0.05
    assert s.faults.amazon.throttle.rate == 10
    assert {op.action for op in s.operations} <= {"add_reason_mapping", "add_sku"}


def test_several_closes_load_and_a_bad_close_is_named(small_raw):
    raw = copy.deepcopy(small_raw)
    closes = [{"period": "2026-10", "on": "2026-11-03"}, {"period": "2026-11", "on": "2026-12-03"}]
    raw["run"].update({"to": "2026-12-03", "close_period": "2026-11", "closes": closes})
    s = Scenario.from_dict(raw)
    assert [(c.period, c.on.isoformat()) for c in s.run.closes or []] == [
        ("2026-10", "2026-11-03"),
        ("2026-11", "2026-12-03"),
    ]
    bad = [
        (
            [{"period": "2026-10", "on": "2026-10-31"}],
            "run.closes[0].on: 2026-10 cannot be closed on 2026-10-31, before the month ended",
        ),
        (
            [{"period": "2026-11", "on": "2026-12-04"}],
            "run.closes[0].on: 2026-12-04 is not a day of the run (2026-10-01..2026-12-03)",
        ),
        (
            list(reversed(closes)),
            "run.closes[1]: closes must be in order of period and day, each period once "
            "(2026-10 on 2026-11-03 after 2026-11 on 2026-12-03)",
        ),
    ]
    for wrong, message in bad:
        raw["run"]["closes"] = wrong
        with pytest.raises(ScenarioError) as e:
            Scenario.from_dict(raw)
        assert str(e.value) == message
    raw["run"]["closes"] = [{"period": "2026-13", "on": "2026-12-03"}]
    with pytest.raises(ScenarioError, match=r"^run\.closes\[0\]\.period: "):
        Scenario.from_dict(raw)
