"""The production path on this machine: a scenario month through the real scheduler on CeleryExecutor.

``returnledger_dev.cluster.demo`` (``make cluster-demo``) starts the local cluster (api-server, scheduler,
dag-processor, triggerer, two Celery workers, Redis broker, PostgreSQL metadata and results), asks for the
month's ``returns_sync`` runs as backfills through the REST API (the demo itself creates one run per day),
closes the month, clears one day's ``push_credits`` and lets it run again; check.py judges the outputs.

Needs Redis (REDIS_URL, default 127.0.0.1:6379). Without it the test is skipped with that reason, except
where RETURNLEDGER_REQUIRE_CLUSTER=1 (set by .ci/run): there a missing Redis fails it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from datetime import date

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _require(reason: str) -> None:
    if os.environ.get("RETURNLEDGER_REQUIRE_CLUSTER") == "1":
        pytest.fail(f"RETURNLEDGER_REQUIRE_CLUSTER=1 and {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url() -> str:
    from returnledger_dev.cluster.processes import check_redis
    from returnledger_dev.cluster.spec import DEFAULT_REDIS_URL

    url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    why = check_redis(url)
    if why:
        _require(f"no Redis broker at {url} ({why}): the Celery cluster test needs one (set REDIS_URL)")
    return url


def test_month_through_the_scheduler_on_two_celery_workers(tmp_path, pg_server, redis_url, generated_month):
    from returnledger_dev import scratch_db
    from returnledger_dev.cluster import demo as cluster_demo
    from returnledger_dev.cluster import processes as lc

    scenario, expected = generated_month(8, 5, False)
    (tmp_path / "scenario.json").write_text(json.dumps(scenario))
    (tmp_path / "scenario.expected.json").write_text(json.dumps(expected))

    root, out = tmp_path / "cluster", tmp_path / "out"
    name = f"test{uuid.uuid4().hex[:6]}"  # its own Celery queue and worker names on a shared Redis
    try:
        s = cluster_demo.run_cluster_scenario(
            tmp_path / "scenario.json",
            out,
            dsn=pg_server,  # the server: the demo creates its own ledger database there
            faults=False,
            port=_free_port(),
            root=root,
            redis_url=redis_url,
            mode="backfill",
            name=name,
            progress=lambda *_: None,
        )
    finally:
        if lc.read_state(root):
            lc.stop(root, progress=lambda *_: None)
        from returnledger_dev.demo.ledger_db import LEDGER_FILE

        if (out / LEDGER_FILE).is_file():  # the ledger the demo made for itself, and its Airflow metadata
            ledger = scratch_db.with_database(pg_server, (out / LEDGER_FILE).read_text().strip())
            scratch_db.drop_database(pg_server, ledger)
            scratch_db.drop_database(pg_server, lc.metadata_dsn(ledger))
    assert lc.read_state(root) is None  # stopped, nothing left running
    # as separate hosts: every worker on its own folders, what tasks share in the cluster's S3 (issue 24)
    assert (root / "hosts" / "worker-1" / "work").is_dir() and (root / "hosts" / "worker-2" / "tmp").is_dir()
    assert s["cluster"]["object_store"]["bucket"] == "returnledger-store"
    days = (date.fromisoformat(scenario["run"]["to"]) - date.fromisoformat(scenario["run"]["from"])).days + 1
    assert len(list((out / "validation").glob("*.json"))) == days  # each run's GX result, read back from S3
    assert not [
        p for w in (1, 2) for p in (root / "hosts" / f"worker-{w}" / "data").rglob("*") if p.is_file()
    ]
    # each worker imported the heavy libraries once at start (returnledger.airflow.celery), for its tasks
    for i in (1, 2):
        assert "preloaded in the Celery worker" in (root / "logs" / f"worker-{i}.log").read_text()

    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "returnledger_dev.scenarios.check",
            str(tmp_path / "scenario.expected.json"),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0 and "6 passed, 0 failed" in check.stdout, check.stdout + check.stderr

    facts = s["cluster"]
    first, last = (date.fromisoformat(scenario["run"][k]) for k in ("from", "to"))
    assert len([k for k in facts["runs"] if k.startswith("returns_sync:")]) == (last - first).days + 1
    # executed by both Celery workers, on this cluster's queue (not by dag.test)
    assert set(facts["task_instances_by_hostname"]) == {f"{name}-worker-1", f"{name}-worker-2"}, facts
    assert set(facts["task_instances_by_queue"]) == {f"returnledger-{name}"}
    # a cleared push_credits ran again and Amazon saw nothing new
    rerun = facts["rerun"]
    assert rerun["state"] == "success" and rerun["try_number"][1] > rerun["try_number"][0]
    assert rerun["new_submissions"] == 0
