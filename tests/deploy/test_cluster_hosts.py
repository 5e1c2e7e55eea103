"""``make cluster`` as separate hosts would be (returnledger_dev.cluster.hosts): each process on a folder of
its own, and what tasks share in S3 (a moto server the cluster starts), reached through ``aws_default``.

Two "hosts" (processes with their own cwd, TMPDIR and RETURNLEDGER_LOCAL_DIR, no AWS_* variables): the
first builds a digest into the store, the second, which has none of the first one's folders, reads
it back: only the store connects them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BUILD = """
import json, sys
from datetime import datetime, timezone
from returnledger.airflow.objects import object_store
from returnledger.reports.digest_sections import Digest
from returnledger.reports.digests import write_digests, _summary

d = Digest("finance", "[returnledger] daily digest", "<p>written on host 1</p>", {"open": 3}, "daily",
           datetime(2026, 10, 2, 7, tzinfo=timezone.utc))
folder = object_store("digests")
(path,) = write_digests([d], folder)
print(json.dumps(_summary(d, path)))
"""

SEND = """
import json, os, sys
from returnledger.airflow.objects import object_store
from returnledger.reports.digests import digest_from_file

summary = json.loads(sys.argv[1])
d = digest_from_file(summary, object_store("digests"))
print(json.dumps({"html": d.html, "counts": d.counts, "cwd": os.getcwd(), "tmp": os.environ["TMPDIR"]}))
"""


def _python(code: str, env: dict, cwd: Path, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_hosts_share_a_digest_only_through_the_local_s3_store(tmp_path):
    from returnledger_dev.cluster import hosts
    from returnledger_dev.cluster.spec import free_port

    port = free_port()
    server = subprocess.Popen(
        hosts.s3_command(port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = hosts.s3_url(port)
    try:
        hosts.wait_s3(url, alive=lambda: server.poll() is None)
        base = {
            k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW_CONN", "AIRFLOW_VAR"))
        }
        base.update(
            hosts.store_env(url), AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null"
        )
        one, two = (hosts.host_dirs(tmp_path, f"worker-{i}") for i in (1, 2))
        assert len({str(d["cwd"]) for d in (one, two)} | {str(d["tmp"]) for d in (one, two)}) == 4
        summary = _python(BUILD, {**base, **hosts.host_env(one)}, one["cwd"])
        assert summary["path"].startswith(f"s3://aws_default@{hosts.BUCKET}/digests/"), summary
        got = _python(SEND, {**base, **hosts.host_env(two)}, two["cwd"], json.dumps(summary))
        assert got["html"] == "<p>written on host 1</p>" and got["counts"] == {"open": 3}
        assert got["cwd"] == str(two["cwd"]) and got["tmp"] == str(two["tmp"])
        # nothing landed on either host's disk: the digest is in the bucket
        assert not [p for d in (one, two) for p in d["data"].rglob("*") if p.is_file()]
        keys = {o["Key"] for o in hosts.s3_client(url).list_objects_v2(Bucket=hosts.BUCKET)["Contents"]}
        assert keys == {"digests/daily-2026-10-02-finance.html", "digests/daily-2026-10-02.json"}
        fetched = hosts.download(url, "digests/daily-", tmp_path / "copy", relative_to="digests/")
        assert sorted(p.name for p in fetched) == ["daily-2026-10-02-finance.html", "daily-2026-10-02.json"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)


def test_every_component_of_the_cluster_gets_a_host_of_its_own(tmp_path):
    from returnledger_dev.cluster import hosts

    envs = {n: hosts.host_env(hosts.host_dirs(tmp_path, n)) for n in ("scheduler", "worker-1", "worker-2")}
    for key in ("TMPDIR", "RETURNLEDGER_LOCAL_DIR"):
        assert len({e[key] for e in envs.values()}) == 3, key
    conn = json.loads(hosts.store_env("http://127.0.0.1:9")["AIRFLOW_CONN_AWS_DEFAULT"])
    assert conn["extra"]["endpoint_url"] == "http://127.0.0.1:9" and conn["conn_type"] == "aws"
