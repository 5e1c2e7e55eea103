"""``make cluster`` as separate hosts would be: every component in a folder of its own, and the files tasks
share in S3.

Each component process (every Celery worker above all) gets its own working folder, temp folder and data
folder (``<cluster root>/hosts/<component>/``: ``cwd``, ``TMPDIR``, ``RETURNLEDGER_LOCAL_DIR``), so a task
that read a file another task wrote to its own disk would fail here as it would on two hosts. The shared
object store is S3: a moto server on loopback (``moto_server``, in the dev requirements), started with the
cluster and stopped with it, its bucket made at start; the ``aws_default`` connection points at it
(``endpoint_url`` in its extra, the only place the endpoint and the keys exist) and the Variable
``returnledger_object_store`` is ``s3://<bucket>/``. Its objects live in the server's memory: they go
when the cluster stops.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

#: the bucket of a local cluster's object store, and the region and keys moto is given
BUCKET, REGION = "returnledger-store", "eu-west-2"
ACCESS_KEY, SECRET_KEY = "local-cluster", "local-cluster-secret"


def host_dirs(root: Path, component: str) -> dict[str, Path]:
    """The folders of one component's "host": its working folder, temp folder and data folder."""
    base = root / "hosts" / component
    dirs = {"cwd": base / "work", "tmp": base / "tmp", "data": base / "data"}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def host_env(dirs: dict[str, Path]) -> dict[str, str]:
    """The variables that give a process its own folders (temp files, RETURNLEDGER_LOCAL_DIR)."""
    tmp = str(dirs["tmp"])
    return {"TMPDIR": tmp, "TEMP": tmp, "TMP": tmp, "RETURNLEDGER_LOCAL_DIR": str(dirs["data"])}


def s3_command(port: int) -> list[str]:
    server = Path(sys.executable).with_name("moto_server")
    if not server.exists():
        raise RuntimeError(f"{server} is missing: the local cluster's S3 needs moto[server] (make venv)")
    return [str(server), "-H", "127.0.0.1", "-p", str(port)]


def s3_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def aws_connection(url: str) -> dict:
    """``aws_default`` at the local S3: keys, region and endpoint in the connection only."""
    return {
        "conn_type": "aws",
        "login": ACCESS_KEY,
        "password": SECRET_KEY,
        "extra": {"region_name": REGION, "endpoint_url": url},
    }


def s3_client(url: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def wait_s3(url: str, *, timeout_s: float = 60, alive=lambda: True) -> None:
    """Wait until the S3 server answers, then make the store's bucket."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(url, timeout=2)
            break
        except httpx.HTTPError:
            if not alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the local S3 at {url} did not answer") from None
            time.sleep(0.3)
    s3_client(url).create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})


def store_env(url: str) -> dict[str, str]:
    """What every component gets for the shared store: ``aws_default`` and ``returnledger_object_store``."""
    return {
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws_connection(url)),
        "AIRFLOW_VAR_RETURNLEDGER_OBJECT_STORE": f"s3://{BUCKET}/",
    }


# --------------------------------------------------------------------------- the store, from outside


def upload(url: str, local: Path, key: str) -> None:
    """Put a local file into the store (e.g. a Vendor Central export landing in ``exports/``)."""
    s3_client(url).upload_file(str(local), BUCKET, key)


def download(url: str, prefix: str, into: Path, relative_to: str | None = None) -> list[Path]:
    """Copy every object whose key starts with ``prefix`` into the folder ``into``, named by the key
    relative to ``relative_to`` (default: the prefix)."""
    client, got = s3_client(url), []
    strip = prefix if relative_to is None else relative_to
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    for page in pages:
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(strip) :].lstrip("/")
            if not rel:
                continue
            target = into / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(BUCKET, obj["Key"], str(target))
            got.append(target)
    return got


def clear_hosts(root: Path) -> None:
    shutil.rmtree(root / "hosts", ignore_errors=True)
