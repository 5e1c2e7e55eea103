"""The Assets carry the standard URI schemes of what they are (issue 24): ledger tables as the postgres
provider's ``postgres://host:port/database/schema/table``, files as their object-store folder, so that
Airflow's providers sanitize them and OpenLineage names them as its SQL and storage integrations do."""

from __future__ import annotations

import importlib
import json

import pytest

ENVS = (
    "AIRFLOW_CONN_RETURNS_DB",
    "AIRFLOW_VAR_RETURNLEDGER_OBJECT_STORE",
    "AIRFLOW_VAR_RETURNLEDGER_REPORT_BASE",
)


def _assets(monkeypatch, **env):
    for key in ENVS:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import returnledger.airflow.assets as assets

    return importlib.reload(assets)


def _openlineage(asset):
    """The OpenLineage dataset the provider makes of ``asset`` (None: no converter for its scheme)."""
    from airflow.providers.openlineage.utils.utils import translate_airflow_asset

    dataset = translate_airflow_asset(asset, lineage_context=None)
    return dataset and (dataset.namespace, dataset.name)


def test_ledger_tables_are_postgres_uris_from_the_returns_db_connection(monkeypatch):
    conn = {"conn_type": "postgres", "host": "db.internal", "port": 6432, "schema": "ledger_prod"}
    assets = _assets(monkeypatch, AIRFLOW_CONN_RETURNS_DB=json.dumps(conn))
    assert assets.LEDGER.extra == {"label": "returns_ledger"}
    assert assets.LEDGER.name == assets.LEDGER.uri  # a ledger at a new address is a new Asset, not a clash
    assert assets.LEDGER.uri == "postgres://db.internal:6432/ledger_prod/ledger/return_line"
    assert assets.RECON_RESULTS.uri == "postgres://db.internal:6432/ledger_prod/ledger/recon_result"
    assert _openlineage(assets.LEDGER) == ("postgres://db.internal:6432", "ledger_prod.ledger.return_line")
    # the URI form of the connection (docker-compose.yaml) names the same table
    uri = "postgresql://returnledger:secret@db.internal:6432/ledger_prod"
    assert _assets(monkeypatch, AIRFLOW_CONN_RETURNS_DB=uri).LEDGER.uri == assets.LEDGER.uri


def test_without_the_connection_in_the_environment_the_documented_default(monkeypatch):
    assets = _assets(monkeypatch)
    assert assets.LEDGER.uri == "postgres://localhost:5432/returnledger/ledger/return_line"


def test_files_are_object_store_paths(monkeypatch, tmp_path):
    assets = _assets(monkeypatch, AIRFLOW_VAR_RETURNLEDGER_OBJECT_STORE="s3://aws_default@acme-returns/prod/")
    # the connection id in the store's URI is how to reach it, not part of the data's name
    assert assets.REPORT.uri == "s3://acme-returns/prod/reports"
    assert assets.AMAZON_EXPORTS.uri == "s3://acme-returns/prod/exports"
    assert _openlineage(assets.REPORT) == ("s3://acme-returns", "prod/reports")
    assets = _assets(monkeypatch, AIRFLOW_VAR_RETURNLEDGER_OBJECT_STORE=tmp_path.as_uri())
    assert assets.REPORT.uri == f"{tmp_path.as_uri()}/reports"
    assert _openlineage(assets.REPORT) == ("file", f"{tmp_path}/reports")
    # a report base of its own (Variable returnledger_report_base) is where the reports are
    assets = _assets(
        monkeypatch,
        AIRFLOW_VAR_RETURNLEDGER_OBJECT_STORE=tmp_path.as_uri(),
        AIRFLOW_VAR_RETURNLEDGER_REPORT_BASE="s3://finance-reports/returns",
    )
    assert assets.REPORT.uri == "s3://finance-reports/returns"


@pytest.mark.parametrize("name", ["LEDGER", "RECON_RESULTS", "REPORT", "AMAZON_EXPORTS"])
def test_every_asset_has_a_standard_scheme_openlineage_can_name(monkeypatch, name):
    assets = _assets(monkeypatch)
    asset = getattr(assets, name)
    assert asset.uri.split("://")[0] in {"postgres", "s3", "file"}, asset.uri
    assert _openlineage(asset), f"{asset.uri}: no OpenLineage dataset for it"


def test_the_dags_use_these_assets():
    """returns_sync emits the ledger, returns_reconciliation follows it and reads/produces the others."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    recon = (root / "dags" / "returns_reconciliation.py").read_text()
    assert "returnledger://" not in recon
    assert "from returnledger.airflow.assets import" in recon
    assert (
        "from returnledger.airflow.assets import LEDGER"
        in (root / "include" / "returnledger" / "airflow" / "sync_tasks.py").read_text()
    )


def test_a_ledger_on_a_unix_socket_is_named_on_this_host(monkeypatch):
    """The embedded server (and any local socket) gives no TCP host: the postgres asset scheme needs one."""
    conn = {"conn_type": "postgres", "host": "/tmp/pg-socket-dir", "port": 5432, "schema": "ledger_x"}
    assets = _assets(monkeypatch, AIRFLOW_CONN_RETURNS_DB=json.dumps(conn))
    assert assets.LEDGER.uri == "postgres://localhost:5432/ledger_x/ledger/return_line"
    uri = "postgresql://postgres@/ledger_x?host=/tmp/pg-socket-dir"
    assert _assets(monkeypatch, AIRFLOW_CONN_RETURNS_DB=uri).LEDGER.uri == assets.LEDGER.uri
