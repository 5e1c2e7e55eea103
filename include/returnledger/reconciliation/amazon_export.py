"""Import of Amazon Vendor Central returns exports, behind a Great Expectations gate.

There is no SP-API report of vendor returns, so the Amazon side of the
reconciliation comes from the Vendor Central returns export
(``vendor_central_returns_<YYYY-MM>.csv``) dropped in object storage (S3 in
production, a local folder by default). The whole file is validated first;
one bad row rejects the file with a message naming the file, the line and the
problem, and nothing is imported. An accepted file is loaded in one
transaction, and its sha256 in ``ledger.import_file`` makes a re-import of
the same file a no-op.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from dataclasses import dataclass
from datetime import datetime

from returnledger.reconciliation.period import PERIOD_RE
from returnledger.store.db import connect, unit_of_work
from returnledger.store.objects import as_path

log = logging.getLogger(__name__)

COLUMNS = [
    "amazon_return_id",
    "returns_notice",
    "rma_id",
    "vret",
    "asin",
    "sku",
    "quantity",
    "label",
    "returned_at",
    "charged_amount",
]
LABELS = ["REBOUND", "APRL"]
_LINE = "__line__"  # file line number of each row (the header is line 1)
MAX_LISTED_PROBLEMS = 25


def export_name(period: str) -> str:
    return f"vendor_central_returns_{period}.csv"


@dataclass(frozen=True)
class ImportResult:
    source_file: str
    uri: str
    period: str
    status: str  # IMPORTED, UNCHANGED (same sha256 already imported), MISSING (no file yet)
    sha256: str | None = None
    rows: int = 0
    inserted: int = 0
    updated: int = 0
    removed: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Problem:
    line: int | None  # file line (header = 1); None for file-level problems
    column: str | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "header"
        col = f", column {self.column}" if self.column else ""
        return f"{where}{col}: {self.message}"


class AmazonExportRejected(ValueError):
    """The export failed validation; nothing was imported."""

    def __init__(self, source: str, problems: list[Problem], data_docs: str | None = None):
        self.source = source
        self.problems = problems
        self.data_docs = data_docs  # the Data Docs page of the validation that rejected it, if built
        listed = "\n".join(f"  {source} {p}" for p in problems[:MAX_LISTED_PROBLEMS])
        more = len(problems) - MAX_LISTED_PROBLEMS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(
            f"Amazon returns export {source} rejected, nothing imported "
            f"({len(problems)} problem(s)):\n{listed}{tail}"
            + (f"\n  Data Docs: {data_docs}" if data_docs else "")
        )


# --- validation -------------------------------------------------------------------


def _read_rows(raw: bytes, source: str):
    """The header and a DataFrame of the rows as text (empty cell = '')."""
    import pandas as pd

    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise AmazonExportRejected(source, [Problem(None, None, f"not UTF-8 text ({e})")]) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise AmazonExportRejected(source, [Problem(None, None, "the file is empty (no header)")])
    header = [h.strip() for h in header]
    problems, rows, lines = [], [], []
    line_no = 1
    for rec in reader:
        line_no = reader.line_num
        if not rec or rec == [""]:
            continue
        if len(rec) != len(header):
            problems.append(Problem(line_no, None, f"has {len(rec)} cells, the header has {len(header)}"))
            continue
        rows.append(rec)
        lines.append(line_no)
    df = pd.DataFrame(rows, columns=header, dtype=str) if rows else pd.DataFrame(columns=header, dtype=str)
    df[_LINE] = pd.Series(lines, dtype="int64")
    return header, df, problems


def _suite(columns: list[str]):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name="vendor_central_returns_export")
    suite.add_expectation(gxe.ExpectTableColumnsToMatchSet(column_set=[*COLUMNS, _LINE], exact_match=True))
    present = set(columns)
    checks = [
        (
            "amazon_return_id",
            gxe.ExpectColumnValuesToMatchRegex(column="amazon_return_id", regex=r"\S"),
            "amazon_return_id is empty",
        ),
        (
            "amazon_return_id",
            gxe.ExpectColumnValuesToBeUnique(column="amazon_return_id"),
            "amazon_return_id {value!r} appears more than once (lines {lines})",
        ),
        (
            "returns_notice",
            gxe.ExpectColumnValuesToMatchRegex(column="returns_notice", regex=r"\S"),
            "returns_notice is empty",
        ),
        ("sku", gxe.ExpectColumnValuesToMatchRegex(column="sku", regex=r"\S"), "sku is empty"),
        (
            "quantity",
            gxe.ExpectColumnValuesToMatchRegex(column="quantity", regex=r"^\s*\d{1,9}\s*$"),
            "quantity {value!r} is not a whole number of units",
        ),
        (
            "label",
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=LABELS),
            "label {value!r} is not one of " + ", ".join(LABELS),
        ),
        (
            "returned_at",
            gxe.ExpectColumnValuesToMatchRegex(column="returned_at", regex=r"^\d{4}-\d{2}-\d{2}$"),
            "returned_at {value!r} is not a date (YYYY-MM-DD)",
        ),
        (
            "returned_at",
            gxe.ExpectColumnValuesToMatchStrftimeFormat(column="returned_at", strftime_format="%Y-%m-%d"),
            "returned_at {value!r} is not a valid calendar date",
        ),
        (
            "charged_amount",
            gxe.ExpectColumnValuesToMatchRegex(
                column="charged_amount", regex=r"^(\s*\d{1,10}(\.\d{1,2})?\s*)?$"
            ),
            "charged_amount {value!r} is not an amount (digits with up to two decimals, or empty)",
        ),
    ]
    # (expectation type, column) -> (column named in the problem, message template)
    messages: dict[tuple[str, str | None], tuple[str, str]] = {}
    for column, expectation, message in checks:
        if column in present:
            suite.add_expectation(expectation)
            messages[(expectation.expectation_type, column)] = (column, message)
    if {"returns_notice", "sku"} <= present:
        e = suite.add_expectation(gxe.ExpectCompoundColumnsToBeUnique(column_list=["returns_notice", "sku"]))
        messages[(e.expectation_type, None)] = (
            "returns_notice",
            "returns notice and SKU {value!r} appear more than once (lines {lines}); "
            "Amazon keeps one row per returns notice and SKU",
        )
    return suite, messages


def validate_export(raw: bytes, source: str, docs=None):
    """Run the GX gate (a Validation Definition by a Checkpoint); returns the validated DataFrame or
    raises AmazonExportRejected. ``docs``: a path-like folder (the store's ``data-docs/``) for its
    Data Docs."""
    from returnledger.screening.gx import ephemeral_context, publish_data_docs, run_checkpoint

    header, df, problems = _read_rows(raw, source)
    ctx = ephemeral_context()
    suite, messages = _suite(header)
    result, key = run_checkpoint(
        ctx,
        df,
        suite,
        source="amazon_export",
        asset="returns",
        batch="file",
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [_LINE]},
        run_name=source,
    )
    page = None
    if docs is not None:
        page = str(docs / publish_data_docs(ctx, key, docs))
        log.info("%s validated: Data Docs page %s", source, page)
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        if cfg.type == "expect_table_columns_to_match_set":
            mismatch = (r.result.get("details") or {}).get("mismatched") or {}
            missing = [c for c in mismatch.get("missing", []) if c != _LINE]
            unexpected = [c for c in mismatch.get("unexpected", []) if c != _LINE]
            if missing:
                problems.append(Problem(1, ", ".join(missing), "missing column(s): " + ", ".join(missing)))
            if unexpected:
                problems.append(
                    Problem(1, ", ".join(unexpected), "unexpected column(s): " + ", ".join(unexpected))
                )
            continue
        column, template = messages.get(
            (cfg.type, cfg.kwargs.get("column")), (cfg.kwargs.get("column"), "failed " + cfg.type)
        )
        exc = r.exception_info or {}
        if isinstance(exc, dict) and exc.get("raised_exception"):
            problems.append(Problem(None, column, f"could not be checked: {exc.get('exception_message')}"))
            continue
        bad = r.result.get("unexpected_index_list") or []
        if cfg.type in ("expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"):
            cols = cfg.kwargs.get("column_list") or [cfg.kwargs["column"]]
            groups: dict[tuple, list[int]] = {}
            for item in bad:
                groups.setdefault(tuple(item[c] for c in cols), []).append(int(item[_LINE]))
            for value, lines in groups.items():
                shown = value[0] if len(value) == 1 else " / ".join(value)
                problems.append(
                    Problem(
                        min(lines),
                        column,
                        template.format(value=shown, lines=", ".join(map(str, sorted(lines)))),
                    )
                )
        else:
            for item in bad:
                problems.append(Problem(int(item[_LINE]), column, template.format(value=item.get(column))))
    if problems:
        seen, unique = set(), []
        for p in sorted(problems, key=lambda p: (p.line or 0, p.column or "")):
            if (p.line, p.column) not in seen:  # one problem per cell is enough to fix it
                seen.add((p.line, p.column))
                unique.append(p)
        raise AmazonExportRejected(source, unique, data_docs=page)
    return df


# --- load -------------------------------------------------------------------------

_TEMP_SQL = """
CREATE TEMP TABLE export_rows (
    amazon_return_id text, returns_notice text, rma_id text, vret text, asin text, sku text,
    quantity integer, label text, returned_at date, charged_amount numeric(12, 2)
) ON COMMIT DROP
"""

_UPSERT_SQL = """
INSERT INTO ledger.amazon_return (amazon_return_id, returns_notice, rma_id, vret, asin, sku, quantity, label,
                                  returned_at, charged_amount, source_file, imported_at, export_period)
SELECT amazon_return_id, returns_notice, rma_id, vret, asin, sku, quantity, label, returned_at,
       charged_amount, %(source)s, %(at)s, %(period)s
  FROM export_rows
ON CONFLICT (amazon_return_id) DO UPDATE SET
    returns_notice = EXCLUDED.returns_notice, rma_id = EXCLUDED.rma_id, vret = EXCLUDED.vret,
    asin = EXCLUDED.asin, sku = EXCLUDED.sku, quantity = EXCLUDED.quantity, label = EXCLUDED.label,
    returned_at = EXCLUDED.returned_at, charged_amount = EXCLUDED.charged_amount,
    source_file = EXCLUDED.source_file, imported_at = EXCLUDED.imported_at,
    export_period = EXCLUDED.export_period
WHERE (amazon_return.returns_notice, amazon_return.rma_id, amazon_return.vret, amazon_return.asin,
       amazon_return.sku, amazon_return.quantity, amazon_return.label, amazon_return.returned_at,
       amazon_return.charged_amount, amazon_return.source_file)
      IS DISTINCT FROM
      (EXCLUDED.returns_notice, EXCLUDED.rma_id, EXCLUDED.vret, EXCLUDED.asin, EXCLUDED.sku,
       EXCLUDED.quantity, EXCLUDED.label, EXCLUDED.returned_at, EXCLUDED.charged_amount, EXCLUDED.source_file)
RETURNING (xmax = 0) AS inserted
"""

# A corrected re-issue of the export drops rows: remove them, unless a post-hoc
# ReBound return already hangs off the record (that link is kept for audit).
_REMOVE_VANISHED_SQL = """
DELETE FROM ledger.amazon_return a
 WHERE a.source_file = %(source)s AND a.linked_return_id IS NULL
   AND NOT EXISTS (SELECT 1 FROM export_rows e WHERE e.amazon_return_id = a.amazon_return_id)
"""

_IMPORT_FILE_SQL = """
INSERT INTO ledger.import_file (source_file, sha256, rows, imported_at)
VALUES (%(source)s, %(sha)s, %(rows)s, %(at)s)
ON CONFLICT (source_file) DO UPDATE SET sha256 = EXCLUDED.sha256, rows = EXCLUDED.rows,
                                        imported_at = EXCLUDED.imported_at
"""


def stage_rows(conn, records: list[tuple]) -> None:
    """The file's rows in the transaction's temp table ``export_rows``, indexed by id and analyzed. The
    removal of vanished rows is an anti-join of the month's ``amazon_return`` rows, just written in this
    transaction (no statistics yet: the planner expects one row), against this table: without an index
    it ran as a nested loop over both, 9.5 s for a 16,000-row month and quadratic beyond; with the index
    the same plan probes it once per row."""
    conn.execute(_TEMP_SQL)
    with conn.cursor().copy("COPY export_rows FROM STDIN") as copy:
        for rec in records:
            copy.write_row(rec)
    conn.execute("CREATE INDEX ON export_rows (amazon_return_id)")
    conn.execute("ANALYZE export_rows")


def _blank_none(v: str):
    v = v.strip()
    return v or None


def import_amazon_export(
    dsn: str, base, period: str, *, at: datetime, missing_ok: bool = False, docs=None
) -> ImportResult:
    """Validate and load ``<base>/vendor_central_returns_<period>.csv``; all or nothing.

    ``base``: the exports folder, a path-like object of the object store (returnledger.store.objects) or a
    local folder / URI.

    ``missing_ok`` lets the daily rolling check run before Amazon's export for
    the month exists; the close run requires the file. ``docs``: where its validation's Data Docs go.
    """
    if not PERIOD_RE.match(period or ""):
        raise ValueError(f"period must be YYYY-MM, got {period!r}")
    source = export_name(period)
    path = as_path(base) / source
    uri = str(path)
    if not path.exists():
        if missing_ok:
            log.info("no Amazon returns export at %s yet", uri)
            return ImportResult(source, uri, period, "MISSING")
        raise FileNotFoundError(f"Amazon returns export {uri} does not exist")
    raw = path.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    with connect(dsn) as conn:
        known = conn.execute(
            "SELECT sha256, rows FROM ledger.import_file WHERE source_file = %s", (source,)
        ).fetchone()
    if known and known[0] == sha:
        log.info("%s already imported (sha256 %s), nothing to do", source, sha[:12])
        return ImportResult(source, uri, period, "UNCHANGED", sha, known[1])

    df = validate_export(raw, source, docs=docs)
    records = [
        (
            r["amazon_return_id"].strip(),
            r["returns_notice"].strip(),
            _blank_none(r["rma_id"]),
            _blank_none(r["vret"]),
            _blank_none(r["asin"]),
            r["sku"].strip(),
            int(r["quantity"]),
            r["label"].strip(),
            r["returned_at"].strip(),
            _blank_none(r["charged_amount"]),
        )
        for r in df[COLUMNS].to_dict("records")
    ]
    with unit_of_work(dsn) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('import:' || %s))", (source,))
        stage_rows(conn, records)
        outcome = conn.execute(_UPSERT_SQL, {"source": source, "at": at, "period": period}).fetchall()
        removed = conn.execute(_REMOVE_VANISHED_SQL, {"source": source}).rowcount
        conn.execute(_IMPORT_FILE_SQL, {"source": source, "sha": sha, "rows": len(records), "at": at})
    inserted = sum(1 for (ins,) in outcome if ins)
    result = ImportResult(
        source, uri, period, "IMPORTED", sha, len(records), inserted, len(outcome) - inserted, removed
    )
    log.info("imported %s: %s", source, result)
    return result
