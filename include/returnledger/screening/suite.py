"""The Great Expectations suite for ReBound events, and the per-row splitter.

It checks the validation frame (returnledger.screening.frame) in an ephemeral
GX context (returnledger.screening.gx, imported lazily: it costs seconds).
Each expectation is tagged with the exception type its failures raise; ``COMPLETE`` results with
``unexpected_index_column_names=["raw_id"]`` give the failing rows, so one
batch splits into passing rows and failing rows with a readable reason each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from returnledger.exception_types import screening_outcome
from returnledger.fields import INT4_MAX
from returnledger.models import RETURN_ID_PATTERN, Disposition, EventType, ExceptionType, Grade
from returnledger.screening.gx import docs_page, ephemeral_context, publish_data_docs, run_checkpoint
from returnledger.store.objects import DATA_DOCS

MAX_QUANTITY = 100_000
MAX_LINE = INT4_MAX  # ledger line numbers are int4


@dataclass(frozen=True)
class Check:
    """One expectation, the exception type its failures raise, and how to explain a failure."""

    name: str
    exception_type: ExceptionType
    kind: str  # GX expectation class name
    kwargs: dict[str, Any]
    explain: str  # format string with {value}


@dataclass
class Verdict:
    raw_id: int
    exception_type: ExceptionType
    detail: str
    return_id: str | None = None
    line: int | None = None
    sku: str | None = None
    check: str | None = None  # the check that failed (Check.name): code matches it, never the detail text


@dataclass
class ValidationOutcome:
    rows: int
    passed: list[int]
    failed: list[Verdict]
    gx_result: Any = field(repr=False, default=None)  # GX's validation result object
    gx_context: Any = field(repr=False, default=None)  # the context that ran it, and the result's key
    gx_key: Any = field(repr=False, default=None)  # (what its Data Docs are built from: write_result)

    @property
    def result_json(self) -> dict:
        """GX's result as JSON, built only when asked for (``write_result``): a quarter of a second per
        100k rows that the sync itself never reads."""
        return {} if self.gx_result is None else self.gx_result.to_json_dict()


def build_checks() -> list[Check]:
    """The events suite, in priority order: delivery conflicts and unreadable bytes first, then schema and
    values, then the return order, then reference data (a row reports its first failure only)."""
    line_cond = {"row_condition": "is_line_event==True", "condition_parser": "pandas"}
    ref_cond = {"row_condition": "check_reference==True", "condition_parser": "pandas"}

    def typed(t: EventType) -> dict:
        return {"row_condition": f'type=="{t.value}"', "condition_parser": "pandas"}

    inv = ExceptionType.INVALID_EVENT
    checks = [
        # an event id that arrived with another body: every body waits until a person picks one
        Check(
            "event_conflict",
            ExceptionType.EVENT_CONFLICT,
            "ExpectColumnValuesToBeNull",
            {"column": "conflict"},
            "event {event_id!r} was delivered with different bodies ({value}); all are kept and the line "
            "waits until one is chosen",
        ),
        Check(
            "payload_readable",
            inv,
            "ExpectColumnValuesToBeNull",
            {"column": "payload_problem"},
            "the delivery cannot be read as an event: {value}; its bytes are stored as received",
        ),
        Check(
            "event_id_present",
            inv,
            "ExpectColumnValuesToNotBeNull",
            {"column": "event_id"},
            "the event has no event_id",
        ),
        Check(
            "type_known",
            inv,
            "ExpectColumnValuesToBeInSet",
            {"column": "type", "value_set": [t.value for t in EventType]},
            "unknown event type {value!r}",
        ),
        Check(
            "type_present", inv, "ExpectColumnValuesToNotBeNull", {"column": "type"}, "the event has no type"
        ),
        Check(
            "return_id_present",
            inv,
            "ExpectColumnValuesToNotBeNull",
            {"column": "return_id"},
            "the event has no return_id",
        ),
        Check(
            "return_id_shape",
            inv,
            "ExpectColumnValuesToMatchRegex",
            {"column": "return_id", "regex": RETURN_ID_PATTERN},
            "return_id {value!r} is not a ReBound id",
        ),
        Check(
            "occurred_at_iso",
            inv,
            "ExpectColumnValuesToNotBeNull",
            {"column": "occurred_at"},
            "occurred_at is missing or not an ISO-8601 timestamp",
        ),
        # the line number as sent (any size): ledger lines are int4, so nothing outside 1..2^31-1 may pass
        Check(
            "line_present",
            inv,
            "ExpectColumnValuesToNotBeNull",
            {"column": "line_number", **line_cond},
            "a line event without a valid line number (line: {line_given})",
        ),
        Check(
            "line_positive",
            inv,
            "ExpectColumnValuesToBeBetween",
            {"column": "line_number", "min_value": 1, **line_cond},
            "line {line_given} is not a positive number",
        ),
        Check(
            "line_in_range",
            inv,
            "ExpectColumnValuesToBeBetween",
            {"column": "line_number", "max_value": MAX_LINE, **line_cond},
            f"line {{line_given}} is out of range (1..{MAX_LINE})",
        ),
        Check(
            "quantity_present",
            inv,
            "ExpectColumnValuesToNotBeNull",
            {"column": "quantity", **typed(EventType.RECEIVED)},
            "RECEIVED without a whole-number quantity (quantity: {quantity_given})",
        ),
        Check(
            "quantity_range",
            inv,
            "ExpectColumnValuesToBeBetween",
            {"column": "quantity", "min_value": 1, "max_value": MAX_QUANTITY, **typed(EventType.RECEIVED)},
            f"received quantity {{quantity_given}} is out of range (1..{MAX_QUANTITY}): a receipt is at least"
            " one unit",
        ),
        Check(
            "grade_known",
            inv,
            "ExpectColumnValuesToBeInSet",
            {"column": "grade", "value_set": [g.value for g in Grade], **typed(EventType.GRADED)},
            "grade {value!r} is not one of A, B, C, D",
        ),
        Check(
            "grade_present",
            inv,
            "ExpectColumnValuesToNotBeNull",
            {"column": "grade", **typed(EventType.GRADED)},
            "GRADED without a grade",
        ),
        Check(
            "disposition_known",
            inv,
            "ExpectColumnValuesToBeInSet",
            {
                "column": "disposition",
                "value_set": [d.value for d in Disposition],
                **typed(EventType.DISPOSITIONED),
            },
            "disposition {value!r} is unknown",
        ),
        Check(
            "disposition_present",
            inv,
            "ExpectColumnValuesToNotBeNull",
            {"column": "disposition", **typed(EventType.DISPOSITIONED)},
            "DISPOSITIONED without a disposition",
        ),
        # ReBound's own return order failed its checks: the return's events wait, the feed goes on
        Check(
            "return_order_valid",
            ExceptionType.INVALID_RETURN_ORDER,
            "ExpectColumnValuesToBeNull",
            {"column": "order_problem"},
            "ReBound's return order {return_id!r} fails its own checks ({value}); its events wait",
        ),
        # ReBound could not be asked for the order (outage, malformed answer): the event waits, it is not
        # "unknown to ReBound"; the sync asks again on every run and releases it once ReBound answers
        Check(
            "return_order_read",
            ExceptionType.SYNC_STALLED,
            "ExpectColumnValuesToBeNull",
            {"column": "order_unread"},
            "ReBound's return order {return_id!r} could not be read; the event waits until it can be",
        ),
        # reference checks are joins: a null on the joined column means no match in ReBound / our tables
        Check(
            "return_known",
            inv,
            "ExpectColumnValuesToNotBeNull",
            {"column": "known_return", "row_condition": "has_return_id==True", "condition_parser": "pandas"},
            "return {return_id!r} is not known to ReBound",
        ),
        Check(
            "line_known",
            inv,
            "ExpectColumnValuesToNotBeNull",
            {"column": "sku", **line_cond},
            "line {line} is not on ReBound return order {return_id!r}",
        ),
        Check(
            "reason_mapped",
            ExceptionType.UNMAPPED_REASON_CODE,
            "ExpectColumnValuesToNotBeNull",
            {"column": "amazon_reason", **ref_cond},
            "ReBound reason {reason!r} has no active mapping to an Amazon CR- code",
        ),
        Check(
            "sku_in_catalog",
            ExceptionType.SKU_MISMATCH,
            "ExpectColumnValuesToNotBeNull",
            {"column": "asin", **ref_cond},
            "SKU {sku!r} is not in the catalog (or has no ASIN)",
        ),
    ]
    for c in checks:  # the registry refuses a type whose held events the same run would apply
        screening_outcome(c.exception_type)
    return checks


#: failures of these checks can be fixed later (ReBound adds the return or line): the sync asks ReBound
#: for the order again on every run while the INVALID_EVENT is open, and replays the event once it fits
#: (intake.orders matches them by ``ledger.validation_failure.check_name``)
FIXABLE_CHECKS = ("return_known", "line_known")

#: frame fields a failure's explanation may quote
EXPLAIN_FIELDS = ("return_id", "line", "reason", "sku", "event_id", "line_given", "quantity_given")


def validate_frame(df, run_name: str | None = None) -> ValidationOutcome:
    """Run the events suite over a batch (its Validation Definition, by a Checkpoint run named
    ``run_name``, the batch id); each failing row gets its first (highest-priority) failure."""
    if not len(df):
        return ValidationOutcome(rows=0, passed=[], failed=[])
    ctx = ephemeral_context()
    import great_expectations as gx
    from great_expectations.execution_engine import pandas_execution_engine

    # GX fingerprints every in-memory batch under 1 GB by hashing all of it (a batch marker only): four
    # of its eleven seconds on 626k events. The ledger identifies the batch by raw_id and batch id instead.
    if hasattr(pandas_execution_engine, "HASH_THRESHOLD"):
        pandas_execution_engine.HASH_THRESHOLD = 0
    checks = build_checks()
    checked = sorted(
        {c.kwargs["column"] for c in checks} | {"is_line_event", "has_return_id", "check_reference"}
    )
    gx_frame = df[checked].astype({c: "float64" for c in ("line", "line_number", "quantity") if c in checked})
    suite = gx.ExpectationSuite(name="rebound_events")
    for c in checks:
        suite.add_expectation(getattr(gx.expectations, c.kind)(**c.kwargs, meta={"check": c.name}))
    # raw_id is the frame's named index: GX then lists failing ids as one vector per expectation
    result, key = run_checkpoint(
        ctx,
        gx_frame,
        suite,
        source="rebound",
        asset="events",
        batch="batch",
        run_name=run_name,
        result_format={
            "result_format": "COMPLETE",
            "unexpected_index_column_names": ["raw_id"],
            "exclude_unexpected_values": True,
            "return_unexpected_index_query": False,
        },
    )
    by_name = {c.name: c for c in checks}
    order = {c.name: i for i, c in enumerate(checks)}
    first: dict[int, Check] = {}
    for r in sorted(result.results, key=lambda r: order[r.expectation_config.meta["check"]]):
        check = by_name[r.expectation_config.meta["check"]]
        for hit in r.result.get("unexpected_index_list") or []:
            for raw_id in hit["raw_id"]:
                first.setdefault(int(raw_id), check)
    failed = []
    if first:
        ids = sorted(first)
        shown = sorted(set(EXPLAIN_FIELDS) | {c.kwargs["column"] for c in first.values()})
        for raw_id, row in zip(ids, df.loc[ids, shown].to_dict("records")):
            check = first[raw_id]
            fields = {k: _plain(row[k]) for k in EXPLAIN_FIELDS}
            value = _plain(row[check.kwargs["column"]])
            failed.append(
                Verdict(
                    raw_id=raw_id,
                    exception_type=check.exception_type,
                    detail=f"{check.name}: " + check.explain.format(value=value, **fields),
                    return_id=fields["return_id"],
                    line=None if fields["line"] is None else int(fields["line"]),
                    sku=fields["sku"],
                    check=check.name,
                )
            )
    passed = [x for x in df.index.tolist() if x not in first]
    return ValidationOutcome(len(df), passed, failed, gx_result=result, gx_context=ctx, gx_key=key)


def _isna(v) -> bool:
    import pandas as pd

    return bool(pd.isna(v))


def _plain(v):
    if v is None or _isna(v):
        return None
    return v.item() if hasattr(v, "item") else v


def events_docs_page(batch_id: str) -> str:
    """The Data Docs page of a sync batch's events validation, relative to the store's ``data-docs/``."""
    return docs_page("rebound_events", batch_id, "rebound", "events")


def write_result(outcome: ValidationOutcome, folder: Path, batch_id: str) -> Path:
    """Keep the GX validation result of the run in ``folder`` (the store's ``validation/``, one JSON file
    per batch) and its Data Docs in the store's ``data-docs/`` beside it; the JSON names the page."""
    docs = None
    if outcome.gx_key is not None:
        docs = publish_data_docs(outcome.gx_context, outcome.gx_key, folder.parent / DATA_DOCS)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (batch_id.replace(":", "_").replace("/", "_") + ".json")
    path.write_text(
        json.dumps(
            {
                "batch_id": batch_id,
                "rows": outcome.rows,
                "passed": len(outcome.passed),
                "failed": len(outcome.failed),
                "data_docs": docs and f"{DATA_DOCS}/{docs}",
                "gx_result": outcome.result_json,
            },
            default=str,
            indent=1,
        )
    )
    return path
