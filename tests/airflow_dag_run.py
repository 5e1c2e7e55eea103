"""A throwaway Airflow for ``dag.test()`` runs in a subprocess: its own AIRFLOW_HOME with the given DAG files,
its metadata in a scratch PostgreSQL database (migrated once, dropped afterwards), and a runner script that
tests one DAG of that folder and prints its state (``STATE success``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: runner.py DAGS_FOLDER DAG_ID [LOGICAL_DATE [RUN_CONF_JSON]]: ``dag.test()`` of that DAG, then its state
RUNNER = """
import json
import sys
from datetime import datetime
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
dag = bag.dags[sys.argv[2]]
kwargs = {}
if len(sys.argv) > 3 and sys.argv[3]:
    kwargs["logical_date"] = datetime.fromisoformat(sys.argv[3])
if len(sys.argv) > 4:
    kwargs["run_conf"] = json.loads(sys.argv[4])
dr = dag.test(**kwargs)
print("STATE", dr.state)
"""


@dataclass(frozen=True)
class ThrowawayAirflow:
    """An AIRFLOW_HOME with its DAG folder and the environment its commands run in."""

    home: Path
    dags: Path
    env: dict[str, str]

    def test(
        self,
        dag_id: str,
        *,
        logical: str | None = None,
        conf: dict | None = None,
        extra_env: Mapping[str, str] | None = None,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess:
        """``dag.test()`` of ``dag_id`` (at the logical date ``logical``, with ``conf``) in a subprocess."""
        args = [sys.executable, str(self.home / "runner.py"), str(self.dags), dag_id]
        if logical or conf is not None:
            args.append(logical or "")
        if conf is not None:
            args.append(json.dumps(conf))
        return subprocess.run(
            args, env={**self.env, **(extra_env or {})}, capture_output=True, text=True, timeout=timeout
        )


@contextmanager
def throwaway_airflow(
    pg_server: str,
    home: Path,
    *,
    dag_files: Mapping[str, str | bytes],
    prefix: str,
    drop: tuple[str, ...] = ("AIRFLOW_CONN_", "AIRFLOW_VAR_"),
    extra_env: Mapping[str, str] | None = None,
    migrate_timeout: float = 300,
) -> Iterator[ThrowawayAirflow]:
    """An Airflow in ``home`` whose DAG folder holds ``dag_files`` (file name -> its text), its metadata in a
    scratch database named after ``prefix``; the environment is this one less the variables starting with
    ``drop``, plus ``extra_env``. ``airflow db migrate`` runs once; the metadata database is dropped after."""
    from returnledger_dev import scratch_db

    dags = home / "dags"
    dags.mkdir(parents=True)
    for name, text in dag_files.items():
        (dags / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    (home / "runner.py").write_text(RUNNER)
    meta = scratch_db.create_scratch_database(pg_server, prefix=prefix)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env.update(
            AIRFLOW_HOME=str(home),
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=scratch_db.sqlalchemy_url(meta),
            AIRFLOW__CORE__LOAD_EXAMPLES="false",
            AIRFLOW__CORE__DAGS_FOLDER=str(dags),
            AIRFLOW__CORE__UNIT_TEST_MODE="false",
            **(extra_env or {}),
        )
        subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
            env=env,
            check=True,
            capture_output=True,
            timeout=migrate_timeout,
        )
        yield ThrowawayAirflow(home, dags, env)
    finally:
        scratch_db.drop_database(pg_server, meta)
