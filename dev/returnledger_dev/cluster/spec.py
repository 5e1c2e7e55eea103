"""What a local cluster is: its settings, secrets and databases, and the environment every component
gets (the compose file's, with this machine's hosts, ports and folders: ``airflow_env``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

MARK = "RETURNLEDGER_CLUSTER"
WORKER_HOSTNAME_ENV = "RETURNLEDGER_WORKER_HOSTNAME"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN_USER = "admin"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
#: tunables, the same in the compose file (there as ${NAME:-default}); sized for a 2-core machine
TUNING = {
    "AIRFLOW__CORE__PARALLELISM": "4",
    "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
    "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
    "AIRFLOW__API__WORKERS": "1",
}
#: variables only a cluster of processes on one host sets, per process: two workers on one host need their
#: own log-server port and their own name on the task instances; the other servers need free ports
LOCAL_ONLY = {
    "AIRFLOW_HOME": "a folder per cluster (the image's /opt/airflow in compose)",
    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "task instances name their worker (containers have own hostnames)",
    WORKER_HOSTNAME_ENV: "the worker's name for AIRFLOW__CORE__HOSTNAME_CALLABLE",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "two workers on one host serve logs on two ports",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": "a free port on a shared machine",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": "a free port on a shared machine",
    "AIRFLOW__API__PORT": "a free port on a shared machine",
    MARK: "marks every process of the cluster, so stop leaves none behind",
}
#: the workers preload the heavy libraries every task would import (returnledger.airflow.celery)
CELERY_CONFIG_OPTIONS = "returnledger.airflow.celery.CELERY_CONFIG"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the local workers: the Celery node name, so task instances say which
    of two workers on one host ran them (Airflow's default, the FQDN, is the same for both)."""
    name = os.environ.get(WORKER_HOSTNAME_ENV)
    if name:
        return name
    return socket.getfqdn()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def default_root() -> Path:
    from returnledger.store.db import local_dir

    return local_dir() / "cluster"


@dataclass
class ClusterSpec:
    """What to start. ``ledger_dsn`` is an administrator's DSN of the ledger database (migrations run with
    it; the DAGs get the same database as ``ledger_role``)."""

    root: Path
    ledger_dsn: str
    name: str = "local"
    redis_url: str = DEFAULT_REDIS_URL
    api_port: int = 8080
    workers: int = 2
    fresh: bool = False
    ledger_role: str = "returnledger"
    #: airflow_settings.yaml connection overrides (e.g. the sandbox's URLs), like runner.prepare_airflow
    conn_overrides: dict = field(default_factory=dict)
    #: more variables for every component (Airflow variables, RETURNLEDGER_* settings, scheduler options)
    extra_env: dict = field(default_factory=dict)
    load_reference: bool = True

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", self.name):
            raise ValueError(f"cluster name {self.name!r}: letters, digits, - and _ only")

    @property
    def state_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def queue(self) -> str:
        """The Celery queue of this cluster: clusters sharing one Redis never take each other's tasks."""
        return f"returnledger-{self.name}"


def _secrets(root: Path) -> dict:
    """JWT secret, API secret key and Fernet key: made once per cluster folder, shared by every component."""
    path = root / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    from cryptography.fernet import Fernet

    values = {
        "jwt_secret": secrets.token_urlsafe(48),
        "api_secret_key": secrets.token_urlsafe(32),
        "fernet_key": Fernet.generate_key().decode(),
    }
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))
    path.chmod(0o600)
    return values


def admin_password(root: Path) -> tuple[Path, str]:
    """SimpleAuthManager's passwords file (``{"admin": "..."}``), made once per cluster folder."""
    path = root / "passwords.json"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({ADMIN_USER: secrets.token_urlsafe(12)}))
        path.chmod(0o600)
    return path, json.loads(path.read_text())[ADMIN_USER]


def metadata_dsn(ledger_dsn: str) -> str:
    """Airflow's metadata database and Celery's results: ``<ledger database>_cluster``, same server."""
    import psycopg

    from returnledger_dev import scratch_db

    ledger = psycopg.conninfo.conninfo_to_dict(ledger_dsn).get("dbname") or "postgres"
    return scratch_db.with_database(ledger_dsn, f"{ledger}_cluster"[:63])


def role_dsn(admin_dsn: str, role: str) -> str:
    """The ledger database as the least-privilege role (password from RETURNLEDGER_LEDGER_PASSWORD)."""
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    info["user"] = role
    info.pop("password", None)
    if os.environ.get("RETURNLEDGER_LEDGER_PASSWORD"):
        info["password"] = os.environ["RETURNLEDGER_LEDGER_PASSWORD"]
    return psycopg.conninfo.make_conninfo(**info)


def airflow_env(spec: ClusterSpec, *, api_port: int, meta_dsn: str, password_file: Path) -> dict[str, str]:
    """The variables every component gets: the compose file's ``x-airflow-common`` environment, with this
    machine's hosts, ports and folders."""
    from returnledger.store import db
    from returnledger_dev import scratch_db

    keys = _secrets(spec.root)
    root = db.project_root()
    meta = scratch_db.sqlalchemy_url(meta_dsn)
    api = f"http://127.0.0.1:{api_port}"
    env = {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + meta.replace("postgresql+psycopg2://", "postgresql://", 1),
        "AIRFLOW__CELERY__BROKER_URL": spec.redis_url,
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": CELERY_CONFIG_OPTIONS,
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": spec.queue,
        "AIRFLOW__CORE__FERNET_KEY": keys["fernet_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
        "AIRFLOW__API__SECRET_KEY": keys["api_secret_key"],
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(spec.root / "airflow" / "logs"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "true",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "true",
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        **TUNING,
        "GX_ANALYTICS_ENABLED": "false",
        # lineage events of every task and DAG run into the task logs, as the compose file's default
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "returnledger",
        "OPENLINEAGE__TRANSPORT__TYPE": "console",
        "RETURNLEDGER_HOME": str(root),
    }
    return env


def connections_env(spec: ClusterSpec) -> dict[str, str]:
    """AIRFLOW_CONN_* / AIRFLOW_VAR_* from airflow_settings.yaml, the ledger as the least-privilege role."""
    from returnledger_dev import scratch_db
    from returnledger_dev.settings import load_settings

    ledger = json.loads(scratch_db.airflow_connection_json(role_dsn(spec.ledger_dsn, spec.ledger_role)))
    return load_settings(overrides={"returns_db": ledger, **spec.conn_overrides})["env"]


def spec_from_env(
    root: Path | None = None, *, port: int | None = None, workers: int = 2, fresh: bool = False
) -> ClusterSpec:
    from returnledger.store import db

    return ClusterSpec(
        root=root or default_root(),
        ledger_dsn=db.resolve_dsn(),
        redis_url=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
        api_port=port or int(os.environ.get("RETURNLEDGER_CLUSTER_PORT") or 8080),
        workers=workers,
        fresh=fresh,
    )
