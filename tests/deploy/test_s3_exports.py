"""Object storage for real: a Vendor Central export read from, and the month-end report written to, an S3
API served on this machine (moto in server mode), through the ``aws_default`` Airflow connection only.

The S3 endpoint and the credentials exist nowhere but in that connection (no AWS_* variables), so the
import can only succeed if ``ObjectStoragePath`` is built with the connection id.
"""

from __future__ import annotations

import csv
import io
import json
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BUCKET, REGION = "vendor-exports", "eu-west-2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(monkeypatch):
    """An S3 API on loopback; ``aws_default`` points at it; no AWS_* variables in the environment."""
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    __import__("httpx").post(f"{url}/moto-api/reset")  # moto's state is per process: each test starts empty
    # Airflow keeps one filesystem per connection and process: this test's endpoint, not an earlier test's
    monkeypatch.setattr("airflow.sdk.io.store._STORE_CACHE", {})
    try:
        for key in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_DEFAULT_REGION",
            "AWS_REGION",
        ):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        monkeypatch.setenv(
            "AIRFLOW_CONN_AWS_DEFAULT",
            json.dumps(
                {
                    "conn_type": "aws",
                    "login": "moto-key",
                    "password": "moto-secret",
                    "extra": {"region_name": REGION, "endpoint_url": url},
                }
            ),
        )
        client = boto3.client(
            "s3",
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id="moto-key",
            aws_secret_access_key="moto-secret",
        )
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield client
    finally:
        server.stop()


def _export_csv() -> tuple[bytes, int]:
    from returnledger.reconciliation.amazon_export import COLUMNS

    scenario = json.loads((ROOT / "scenarios" / "small-month.json").read_text())
    rows = scenario["amazon"]["returns"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in COLUMNS])
    return buf.getvalue().encode(), len(rows)


def test_export_read_and_report_written_through_aws_default(s3, fresh_db):
    from returnledger.airflow.objects import storage_path
    from returnledger.reconciliation.amazon_export import import_amazon_export
    from returnledger.reports.finance import write_month_end_report

    body, n = _export_csv()
    s3.put_object(Bucket=BUCKET, Key="vendor-central/vendor_central_returns_2026-10.csv", Body=body)
    at = datetime(2026, 11, 3, tzinfo=UTC)

    assert storage_path(f"s3://{BUCKET}/x").conn_id == "aws_default"
    exports = storage_path(f"s3://{BUCKET}/vendor-central")
    result = import_amazon_export(fresh_db, exports, "2026-10", at=at)
    assert (result.status, result.rows, result.inserted) == ("IMPORTED", n, n)
    again = import_amazon_export(fresh_db, exports, "2026-10", at=at)
    assert again.status == "UNCHANGED"  # same sha256: nothing re-imported

    missing = import_amazon_export(fresh_db, exports, "2026-09", at=at, missing_ok=True)
    assert missing.status == "MISSING"

    # the close run's report path, as dags/returns_reconciliation.py builds it
    out = storage_path(f"s3://{BUCKET}/month-end") / "2026-10"
    write_month_end_report(fresh_db, "2026-10", out, allow_empty=True)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="month-end/")["Contents"]}
    assert {"month-end/2026-10/month_end_report.csv", "month-end/2026-10/month_end_report.html"} <= keys


def test_the_command_line_reaches_s3_through_aws_default_too(s3, fresh_db, capsys):
    """``returnledger import-amazon-export --base-uri s3://...`` reads as the DAG does: through the
    connection (no AWS_* variables here, so fsspec's own credentials would fail), and ``month-end-report
    --out s3://...`` writes there."""
    from returnledger.cli.main import main

    body, n = _export_csv()
    s3.put_object(Bucket=BUCKET, Key="exports/vendor_central_returns_2026-10.csv", Body=body)
    assert (
        main(
            [
                "import-amazon-export",
                "2026-10",
                "--base-uri",
                f"s3://{BUCKET}/exports",
                "--at",
                "2026-11-03T00:00:00Z",
                "--dsn",
                fresh_db,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f'"inserted": {n}' in out and '"status": "IMPORTED"' in out, out
    assert main(["reconcile", "2026-10", "--as-of", "2026-11-03T00:00:00Z", "--dsn", fresh_db]) == 0
    assert (
        main(["month-end-report", "2026-10", "--out", f"s3://{BUCKET}/reports/2026-10", "--dsn", fresh_db])
        == 0
    )
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="reports/")["Contents"]}
    assert "reports/2026-10/month_end_report.csv" in keys
