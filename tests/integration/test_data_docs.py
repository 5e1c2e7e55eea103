"""GX the way GX users expect (issue 24): the events suite runs as a Validation Definition by a Checkpoint,
per-row routing unchanged, and each run's Data Docs are built into the object store's ``data-docs/``
(local folder or any path-like store), the validation JSON and the run's log naming the page."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import msgspec
import pytest

from returnledger.intake.orders import store_return_orders
from returnledger.intake.raw import land_rows, raw_rows
from returnledger.screening.gx import docs_page
from returnledger.screening.screen import validate
from returnledger.store import db

pytestmark = pytest.mark.integration

T0 = datetime(2026, 10, 5, 6, 0, tzinfo=UTC)
BATCH = "sync:2026-10-05T06:00:00+00:00"
GOOD = {
    "type": "RECEIVED",
    "return_id": "RB-1",
    "line": 1,
    "quantity": 1,
    "occurred_at": "2026-10-04T10:00:00Z",
}


def _land(dsn: str) -> None:
    with db.connect(dsn) as conn:
        store_return_orders(
            conn,
            [
                {
                    "return_id": "RB-1",
                    "created_at": "2026-10-01T00:00:00Z",
                    "amazon_refs": {"returns_notice": "RN-1"},
                    "lines": [{"line": 1, "sku": "SKU-A", "reason": "DAMAGED", "quantity": 2}],
                }
            ],
        )
        conn.execute(
            "INSERT INTO ledger.reason_mapping (rebound_reason, amazon_reason, updated_at, updated_by)"
            " VALUES ('DAMAGED', 'CR-DAMAGED_BY_CARRIER', %s, 'test')",
            (T0,),
        )
        conn.execute(
            "INSERT INTO ledger.sku (sku, asin, unit_cost, available, updated_at, updated_by)"
            " VALUES ('SKU-A', 'B000000001', 9.99, 0, %s, 'test')",
            (T0,),
        )
        events = [{"event_id": "ok", **GOOD}, {"event_id": "neg", **GOOD, "quantity": -1}]
        raw = [msgspec.Raw(msgspec.json.encode(e)) for e in events]
        land_rows(conn, raw_rows(raw), len(raw), window_end=T0, batch_id=BATCH)
        conn.commit()


def test_the_events_suite_runs_by_a_checkpoint_and_its_data_docs_land_in_the_store(
    fresh_db, tmp_path, caplog
):
    _land(fresh_db)
    store = tmp_path / "store"
    with caplog.at_level(logging.INFO, logger="returnledger.screening.screen"):
        stats = validate(fresh_db, batch_id=BATCH, result_dir=store / "validation")
    # routing as before: one row passed, one failed its check
    assert (stats["rows"], stats["passed"], stats["failed"]) == (2, 1, 1)
    with db.connect(fresh_db) as conn:
        (detail,) = conn.execute("SELECT detail FROM ledger.validation_failure").fetchone()
    assert detail.startswith("quantity_range:")

    (written,) = (store / "validation").iterdir()
    result = json.loads(written.read_text())
    page = docs_page("rebound_events", BATCH, "rebound", "events")
    assert result["data_docs"] == f"data-docs/{page}"
    # the checkpoint run is named by the batch: the page's path follows from the batch id alone
    assert "sync_2026-10-05T06_00_00+00_00" in page
    html = (store / "data-docs" / page).read_text()
    assert "expect_column_values_to_be_between" in html or "values must be" in html
    assert (store / "data-docs" / "index.html").exists()
    assert (store / "data-docs" / "static").is_dir()
    assert result["gx_result"]["meta"]["checkpoint_id"], "validated by a Checkpoint"
    assert result["gx_result"]["meta"]["validation_id"], "as a Validation Definition"
    # the run's log links the page
    assert str(store / "data-docs" / page) in caplog.text


def test_data_docs_go_to_any_path_like_store_static_files_once(fresh_db, tmp_path):
    """The object store may be s3:// (a path-like UPath / ObjectStoragePath): docs are written through
    its API, and GX's static files are copied only while the store lacks them."""
    from upath import UPath

    from returnledger.screening.suite import validate_frame, write_result

    _land(fresh_db)
    from returnledger.screening.frame import read_validation_frame

    with db.connect(fresh_db) as conn:
        frame = read_validation_frame(conn)
    store = UPath("memory://returnledger-docs-test/store")
    write_result(validate_frame(frame, run_name="b1"), store / "validation", "b1")
    static = sorted(str(p) for p in (store / "data-docs" / "static").rglob("*") if p.is_file())
    assert static
    first = (store / "data-docs" / "static").fs.info(static[0])
    write_result(validate_frame(frame, run_name="b2"), store / "validation", "b2")
    assert (store / "data-docs" / docs_page("rebound_events", "b2", "rebound", "events")).exists()
    assert (store / "data-docs").fs.info(static[0]) == first


def test_an_exception_from_a_failed_check_links_its_data_docs_page(fresh_db, tmp_path, monkeypatch):
    """The exception page links the Data Docs page of the validation that raised the exception, and the
    console serves that page (and nothing outside the site) from the store to a signed-in user."""
    pytest.importorskip("airflow.api_fastapi.auth.managers.simple.simple_auth_manager")
    from airflow.api_fastapi import app as airflow_app
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.models.revoked_token import RevokedToken
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from returnledger.console.app import create_console_app
    from returnledger.moment import RunMoment
    from returnledger.screening.screen import quarantine

    _land(fresh_db)
    store = tmp_path / "store"
    validate(fresh_db, batch_id=BATCH, result_dir=store / "validation")
    quarantine(fresh_db, run=RunMoment(T0, batch_id=BATCH))
    with db.connect(fresh_db) as conn:
        (exception_id,) = conn.execute(
            "SELECT exception_id FROM ledger.exception WHERE raw_id IS NOT NULL"
        ).fetchone()
    (tmp_path / "secret.txt").write_text("not part of the site")

    monkeypatch.setenv(
        "AIRFLOW__API_AUTH__JWT_SECRET", "data-docs-test-secret-not-for-production-" + "x" * 40
    )
    manager = SimpleAuthManager()
    monkeypatch.setattr(airflow_app._AuthManagerState, "instance", manager)
    monkeypatch.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti, **kw: False))
    token = manager.generate_jwt(SimpleAuthManagerUser(username="vera", role="VIEWER"))
    root = FastAPI()
    root.mount(
        "/returnledger",
        create_console_app(dsn_provider=lambda: fresh_db, data_docs=lambda: store / "data-docs"),
    )
    page = docs_page("rebound_events", BATCH, "rebound", "events")
    with TestClient(root, base_url="http://airflow.test", headers={"Authorization": f"Bearer {token}"}) as c:
        detail = c.get(f"/returnledger/exceptions/{exception_id}")
        assert detail.status_code == 200, detail.text
        assert f'href="/returnledger/data-docs/{page}"' in detail.text
        served = c.get(f"/returnledger/data-docs/{page}")
        assert served.status_code == 200 and served.headers["content-type"].startswith("text/html")
        assert served.content == (store / "data-docs" / page).read_bytes()
        assert c.get("/returnledger/data-docs/index.html").status_code == 200
        assert c.get("/returnledger/data-docs/../../secret.txt").status_code == 404
        assert c.get("/returnledger/data-docs/%2E%2E/%2E%2E/secret.txt").status_code == 404
        assert c.get("/returnledger/data-docs/validations/none.html").status_code == 404
    # without a token nothing is served
    with TestClient(root, base_url="http://airflow.test") as anonymous:
        assert anonymous.get(f"/returnledger/data-docs/{page}").status_code == 401


def test_a_rejected_export_names_the_data_docs_page_of_its_validation(fresh_db, tmp_path):
    """The Vendor Central export gate runs by a Checkpoint too: with a docs folder, its Data Docs land
    there and the rejection (the task's failure message) names the page."""
    from returnledger.reconciliation.amazon_export import COLUMNS, AmazonExportRejected, import_amazon_export

    exports = tmp_path / "store" / "exports"
    exports.mkdir(parents=True)
    row = ["AR-1", "RN0001", "", "", "", "SKU-A", "minus one", "REBOUND", "2026-10-10", ""]
    (exports / "vendor_central_returns_2026-10.csv").write_text(
        ",".join(COLUMNS) + "\n" + ",".join(row) + "\n"
    )
    docs = tmp_path / "store" / "data-docs"
    with pytest.raises(AmazonExportRejected) as err:
        import_amazon_export(fresh_db, exports, "2026-10", at=T0, docs=docs)
    page = docs_page(
        "vendor_central_returns_export", "vendor_central_returns_2026-10.csv", "amazon_export", "returns"
    )
    assert err.value.data_docs == str(docs / page)
    assert f"Data Docs: {docs / page}" in str(err.value)
    assert "expect_column_values_to" in (docs / page).read_text() or "quantity" in (docs / page).read_text()
