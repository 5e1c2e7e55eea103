"""The frame the events suite runs on: one row per unprocessed raw event, built in PostgreSQL.

The SQL applies the field rules (returnledger.fields) and joins what a check needs (the return
order, the reference data, conflicting bodies, rejected orders); ``FRAME_COLUMNS`` are its columns as
pandas reads them. The suite (returnledger.screening.suite) only checks the columns.
"""

from __future__ import annotations

import psycopg

from returnledger.exception_queue.queue import ORDER_FETCH_PREFIX
from returnledger.fields import given_sql, number_sql, text_sql, whole_sql
from returnledger.models import LINE_EVENTS, LINE_EVENTS_SQL
from returnledger.store.raw_floor import FLOOR_MARK, at_floor

# The frame the events suite runs on, built in PostgreSQL from the unprocessed raw rows. The typed columns
# of raw_event were filled at extract by the same rules (wrong JSON type -> null, which fails its check);
# the fields only some event types carry are read from the payload for those types alone. Conflicting
# bodies of one event id and rejected return orders come from their own (small) tables. Every raw event
# below the raw floor has been examined (returnledger.store.raw_floor): the frame reads from it up.
VALIDATION_FRAME_SQL = f"""
    SELECT r.raw_id, r.event_id, r.event_type AS type, r.return_id, r.line,
           date_part('epoch', r.occurred_at) AS occurred_at,
           CASE WHEN r.event_type = 'RECEIVED' THEN {whole_sql("quantity")} END AS quantity,
           CASE WHEN r.event_type = 'GRADED' THEN {text_sql("grade")} END AS grade,
           CASE WHEN r.event_type = 'DISPOSITIONED' THEN {text_sql("disposition")} END AS disposition,
           (o.return_id IS NOT NULL OR NULL)::int AS known_return, l.sku, l.reason, m.amazon_reason, s.asin,
           (l.return_id IS NOT NULL)::int AS line_found,
           CASE WHEN r.event_type IN {LINE_EVENTS_SQL} THEN {number_sql("line")} END AS line_number,
           CASE WHEN r.event_type IN {LINE_EVENTS_SQL} THEN {given_sql("line")} END AS line_given,
           CASE WHEN r.event_type = 'RECEIVED' THEN {given_sql("quantity")} END AS quantity_given,
           r.body_problem AS payload_problem, c.versions AS conflict, j.problems AS order_problem,
           -- ReBound could not be asked for the order this event needs (SYNC_STALLED order-fetch:RID)
           CASE WHEN u.return_id IS NOT NULL AND (o.return_id IS NULL OR (r.event_type IN {LINE_EVENTS_SQL}
                                                                        AND l.return_id IS NULL))
                THEN 'the lookup failed' END AS order_unread
    FROM ledger.raw_event r
    LEFT JOIN ledger.return_order o ON o.return_id = r.return_id
    LEFT JOIN ledger.return_line l ON l.return_id = r.return_id AND l.line = r.line
    LEFT JOIN ledger.reason_mapping m ON m.rebound_reason = l.reason AND m.active
    LEFT JOIN ledger.sku s ON s.sku = l.sku AND s.asin <> ''
    LEFT JOIN (SELECT c1.raw_id, string_agg('raw ' || c2.raw_id, ', ' ORDER BY c2.raw_id) AS versions
               FROM ledger.event_conflict c1
               JOIN ledger.event_conflict c2 ON c2.event_id = c1.event_id AND c2.chosen IS NOT FALSE
               WHERE c1.chosen IS NULL GROUP BY c1.raw_id) c ON c.raw_id = r.raw_id
    LEFT JOIN (SELECT return_id, string_agg(problems, '; ' ORDER BY rejected_id) AS problems
               FROM ledger.return_order_rejected WHERE cleared_at IS NULL AND return_id IS NOT NULL
               GROUP BY return_id) j ON j.return_id = r.return_id
    LEFT JOIN (SELECT DISTINCT return_id FROM ledger.exception
               WHERE status = 'open' AND type = 'SYNC_STALLED' AND subject_key LIKE '{ORDER_FETCH_PREFIX}%'
                 AND return_id IS NOT NULL) u ON u.return_id = r.return_id
    WHERE r.raw_id >= {FLOOR_MARK}
      AND NOT EXISTS (SELECT 1 FROM ledger.event_outcome x WHERE x.raw_id = r.raw_id
                                                               AND x.raw_id >= {FLOOR_MARK})
      AND NOT EXISTS (SELECT 1 FROM ledger.validation_failure f WHERE f.raw_id = r.raw_id
                                                                  AND f.raw_id >= {FLOOR_MARK})"""


def read_validation_frame(conn: psycopg.Connection, floor: int = 0):
    """The unprocessed events from the raw floor up (returnledger.store.raw_floor) as a DataFrame: COPY ... TO
    STDOUT as CSV into pandas' C reader."""
    buf = bytearray()
    sql = at_floor(VALIDATION_FRAME_SQL, floor)
    with conn.cursor().copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
        for block in copy:
            buf += block
    return frame_from_csv(bytes(buf))


#: the frame's columns and their pandas types
FRAME_COLUMNS = {
    "raw_id": "int64",
    "event_id": "str",
    "type": "str",
    "return_id": "str",
    "line": "Int64",
    "occurred_at": "float64",
    "quantity": "Int64",
    "grade": "str",
    "disposition": "str",
    "known_return": "Int8",
    "sku": "str",
    "reason": "str",
    "amazon_reason": "str",
    "asin": "str",
    "line_found": "int8",
    "line_number": "Int64",
    "line_given": "str",
    "quantity_given": "str",
    "payload_problem": "str",
    "conflict": "str",
    "order_problem": "str",
    "order_unread": "str",
}


def frame_from_csv(data: bytes):
    """The events frame from the CSV PostgreSQL wrote (``VALIDATION_FRAME_SQL``), indexed by raw_id.

    Only empty fields are null: a ReBound value such as "NA" stays a string and fails its check by name.
    Small value sets are categorical and numbers float64, so GX's checks and row filters stay vectorised.
    """
    import io

    import pandas as pd

    if data.strip():
        df = pd.read_csv(io.BytesIO(data), dtype=FRAME_COLUMNS, keep_default_na=False, na_values=[""])
    else:
        df = pd.DataFrame({c: pd.Series(dtype=t) for c, t in FRAME_COLUMNS.items()})
    df["occurred_at"] = pd.to_datetime(
        df["occurred_at"], unit="s", utc=True
    )  # epoch seconds; null = unparsable
    df["is_line_event"] = df["type"].isin([t.value for t in LINE_EVENTS])
    df["has_return_id"] = df["return_id"].notna()
    df["check_reference"] = df["is_line_event"] & (df["line_found"] == 1)
    for c in ("type", "grade", "disposition", "amazon_reason", "asin"):
        df[c] = df[c].astype("category")
    return df.set_index("raw_id")
