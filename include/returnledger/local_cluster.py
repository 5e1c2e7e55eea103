"""``make cluster``: Airflow 3 on the CeleryExecutor on this machine, one process per component.

The same deployment as docker-compose.yaml, without containers: ``airflow api-server``,
``scheduler``, ``dag-processor``, ``triggerer`` and two ``celery worker`` processes (distinct Celery
node names, ``--celery-hostname``), Redis as the broker (``REDIS_URL``, default
redis://127.0.0.1:6379/0), Airflow's metadata database and the Celery result backend in PostgreSQL
(a database beside the ledger, on the server of ``RETURNLEDGER_DSN``), and the DAGs reaching the ledger as
the least-privilege ``returnledger`` role. Every component gets the variables of ``airflow_env``, which
are the ones the compose file sets (tests/deploy checks that they stay the same): one JWT secret, one
Fernet key, one API secret key (made once, kept in ``.local/cluster/secrets.json``), one execution API URL.
Only hosts, ports and folders differ, plus what only two workers on one host need (``LOCAL_ONLY``).

Each component runs in its own process group (log: ``.local/cluster/logs/<component>.log``), and every
process the cluster starts carries ``RETURNLEDGER_CLUSTER=<id>`` in its environment: ``stop`` sends
SIGTERM to the groups, then SIGKILL after a grace period to every process of the cluster that is left:
the components' descendants (task processes included: Airflow puts each task in a process group of its
own) and anything else with that mark, and nothing else.

    returnledger cluster start [--port 8080] [--workers 2] [--fresh]
    returnledger cluster status
    returnledger cluster stop
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
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
    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "task instances name their worker (containers have their own hostname)",
    WORKER_HOSTNAME_ENV: "the worker's name for AIRFLOW__CORE__HOSTNAME_CALLABLE",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "two workers on one host serve logs on two ports",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": "a free port on a shared machine",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": "a free port on a shared machine",
    "AIRFLOW__API__PORT": "a free port on a shared machine",
    MARK: "marks every process of the cluster, so stop leaves none behind",
}
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the local workers: the Celery node name, so task instances say which
    of two workers on one host ran them (Airflow's default, the FQDN, is the same for both)."""
    name = os.environ.get(WORKER_HOSTNAME_ENV)
    if name:
        return name
    return socket.getfqdn()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
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

    values = {"jwt_secret": secrets.token_urlsafe(48), "api_secret_key": secrets.token_urlsafe(32),
              "fernet_key": Fernet.generate_key().decode()}
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))
    path.chmod(0o600)
    return values


def _admin_password(root: Path) -> tuple[Path, str]:
    """SimpleAuthManager's passwords file (``{"admin": "..."}``), made once per cluster folder."""
    path = root / "passwords.json"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({ADMIN_USER: secrets.token_urlsafe(12)}))
        path.chmod(0o600)
    return path, json.loads(path.read_text())[ADMIN_USER]


def metadata_dsn(ledger_dsn: str) -> str:
    """Airflow's metadata database (and Celery's results): ``<ledger database>_cluster`` on the same server."""
    import psycopg

    from returnledger.store import db

    ledger = psycopg.conninfo.conninfo_to_dict(ledger_dsn).get("dbname") or "postgres"
    return db.with_database(ledger_dsn, f"{ledger}_cluster"[:63])


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

    keys = _secrets(spec.root)
    root = db.project_root()
    meta = db.sqlalchemy_url(meta_dsn)
    api = f"http://127.0.0.1:{api_port}"
    env = {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + meta.replace("postgresql+psycopg2://", "postgresql://", 1),
        "AIRFLOW__CELERY__BROKER_URL": spec.redis_url,
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
        **TUNING,
        "GX_ANALYTICS_ENABLED": "false",
        "RETURNLEDGER_HOME": str(root),
    }
    return env


def connections_env(spec: ClusterSpec) -> dict[str, str]:
    """AIRFLOW_CONN_* / AIRFLOW_VAR_* from airflow_settings.yaml, the ledger as the least-privilege role."""
    from returnledger.settings import load_settings
    from returnledger.store import db

    ledger = json.loads(db.airflow_connection_json(role_dsn(spec.ledger_dsn, spec.ledger_role)))
    return load_settings(overrides={"returns_db": ledger, **spec.conn_overrides})["env"]


# --------------------------------------------------------------------------- processes

def _airflow() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def _marked(cluster_id: str) -> list:
    """Every live process whose environment carries this cluster's mark."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get(MARK) == cluster_id:
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


from returnledger.local_airflow import group_alive as _group_alive  # noqa: E402  (one definition)


def _reap() -> None:
    """Collect any of our own children that exited (so they do not linger as zombies)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _spawn(args: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)


def _init_metadata(pools_json: str) -> None:
    """In a subprocess with the cluster's env: Airflow's tables (``airflow db migrate``) and the pools."""
    from airflow import settings as af_settings
    from airflow.models.pool import Pool
    from airflow.utils import db as af_db

    af_settings.configure_orm()
    af_db.initdb()
    for pool in json.loads(pools_json):
        Pool.create_or_update_pool(pool["name"], pool["slots"], pool["description"], include_deferred=False)


def _ensure_database(admin_dsn: str, target: str, *, fresh: bool) -> None:
    import psycopg
    from psycopg import sql

    name = psycopg.conninfo.conninfo_to_dict(target)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if fresh:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def check_redis(url: str, timeout: float = 3.0) -> str | None:
    """None when Redis answers PING at ``url``, else why not."""
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
        return None
    except Exception as e:  # noqa: BLE001 - the reason is shown to the user
        return f"{type(e).__name__}: {e}"


class ClusterError(RuntimeError):
    pass


def start(spec: ClusterSpec, *, progress=print, timeout_s: float = 300) -> dict:
    """Start the cluster described by ``spec``; returns its state (also written to ``spec.state_file``)."""
    from returnledger.settings import load_settings
    from returnledger.store import migrate

    old = read_state(spec.root)
    if old and _cluster_processes(old):
        raise ClusterError(f"a cluster is already running from {spec.root} ({old['api_url']}); stop it first")
    why = check_redis(spec.redis_url)
    if why:
        raise ClusterError(f"Redis at {spec.redis_url} does not answer ({why}); set REDIS_URL")
    if not _port_free(spec.api_port):
        raise ClusterError(f"port {spec.api_port} is taken; choose another with --port")
    t0 = time.monotonic()
    spec.root.mkdir(parents=True, exist_ok=True)
    (spec.root / "airflow").mkdir(exist_ok=True)
    cluster_id = f"{spec.name}-{uuid.uuid4().hex[:12]}"

    # the ledger, owned by the least-privilege role the DAGs use; reference data
    applied = migrate.migrate(spec.ledger_dsn, owner=spec.ledger_role,
                              owner_password=os.environ.get("RETURNLEDGER_LEDGER_PASSWORD"))
    if spec.load_reference:
        from datetime import datetime, timezone

        from returnledger.reference import catalog as reference

        reference.load_reference(spec.ledger_dsn, at=datetime.now(timezone.utc), actor="cluster start")
    progress(f"ledger ready as role {spec.ledger_role} ({len(applied)} migration(s) applied)")

    meta = metadata_dsn(spec.ledger_dsn)
    _ensure_database(spec.ledger_dsn, meta, fresh=spec.fresh)
    password_file, password = _admin_password(spec.root)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RETURNLEDGER_DSN"))}
    env.update(airflow_env(spec, api_port=spec.api_port, meta_dsn=meta, password_file=password_file))
    env.update(connections_env(spec))
    env.update(spec.extra_env)
    env.update({"AIRFLOW_HOME": str(spec.root / "airflow"), MARK: cluster_id,
                "AIRFLOW__API__PORT": str(spec.api_port),
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(_free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"})
    pools = load_settings()["pools"]
    init = subprocess.run([sys.executable, "-c", "import sys; from returnledger.local_cluster import "
                           "_init_metadata; _init_metadata(sys.argv[1])", json.dumps(pools)],
                          env=env, capture_output=True, text=True, timeout=600)
    if init.returncode != 0:
        raise ClusterError("airflow db migrate failed:\n" + (init.stdout + init.stderr)[-3000:])
    progress(f"Airflow metadata database ready ({time.monotonic() - t0:.0f}s)")

    spec.log_dir.mkdir(parents=True, exist_ok=True)
    procs: dict[str, int] = {}
    workers: dict[str, str] = {}
    state = {"id": cluster_id, "name": spec.name, "root": str(spec.root),
             "api_url": f"http://127.0.0.1:{spec.api_port}", "user": ADMIN_USER,
             "password_file": str(password_file), "redis_url": spec.redis_url, "queue": spec.queue,
             "metadata_dsn": meta, "ledger_dsn": role_dsn(spec.ledger_dsn, spec.ledger_role),
             "log_dir": str(spec.log_dir), "pids": procs, "workers": workers, "started_at": time.time(),
             "throwaway": spec.fresh}
    try:
        for name in COMPONENTS:
            args = [_airflow(), name]
            if name == "api-server":
                args += ["--host", "127.0.0.1", "--port", str(spec.api_port)]
            procs[name] = _spawn(args, env, spec.log_dir / f"{name}.log").pid
        for i in range(1, spec.workers + 1):
            node = f"{spec.name}-worker-{i}"
            wenv = dict(env, **{"AIRFLOW__CORE__HOSTNAME_CALLABLE": "returnledger.local_cluster.worker_hostname",
                                WORKER_HOSTNAME_ENV: node,
                                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port())})
            args = [_airflow(), "celery", "worker", "--celery-hostname", f"{node}@%h",
                    "--concurrency", TUNING["AIRFLOW__CELERY__WORKER_CONCURRENCY"], "--queues", spec.queue]
            procs[f"worker-{i}"] = _spawn(args, wenv, spec.log_dir / f"worker-{i}.log").pid
            workers[f"worker-{i}"] = node
        _write_state(spec.root, state)
        _wait_ready(state, deadline=time.monotonic() + timeout_s, progress=progress)
    except BaseException:
        stop(spec.root, progress=lambda *_: None)
        raise
    state["ready_s"] = round(time.monotonic() - t0, 1)
    _write_state(spec.root, state)
    progress(f"cluster {spec.name} up in {state['ready_s']}s: {state['api_url']} (user {ADMIN_USER}, password in "
             f"{password_file}); workers {', '.join(workers.values())} on queue {spec.queue}; logs {spec.log_dir}")
    return state


def _write_state(root: Path, state: dict) -> None:
    (root / "cluster.json").write_text(json.dumps(state, indent=1))


def read_state(root: Path | None = None) -> dict | None:
    try:
        return json.loads(((root or default_root()) / "cluster.json").read_text())
    except (OSError, ValueError):
        return None


def _worker_nodes_alive(state: dict) -> set[str]:
    """Celery node names (without @host) of this cluster's workers that answer a ping over the broker."""
    from celery import Celery

    app = Celery(broker=state["redis_url"])
    try:
        replies = app.control.ping(timeout=2.0)
    except Exception:  # noqa: BLE001 - broker hiccup: not ready yet
        return set()
    finally:
        app.close()
    names = {node.split("@", 1)[0] for reply in replies for node in reply}
    return names & set(state["workers"].values())


def _wait_ready(state: dict, *, deadline: float, progress) -> None:
    import httpx

    api = state["api_url"]
    want = {"scheduler", "triggerer", "dag_processor"}
    healthy: set[str] = set()
    nodes: set[str] = set()
    while True:
        dead = [n for n, pid in state["pids"].items() if not _group_alive(pid)]
        _reap()
        if dead:
            tails = "\n".join(f"--- {n}.log\n" + "\n".join(_tail(Path(state["log_dir"]) / f"{n}.log", 15))
                              for n in dead)
            raise ClusterError(f"component(s) {', '.join(dead)} exited during start-up:\n{tails}")
        try:
            r = httpx.get(f"{api}/api/v2/monitor/health", timeout=5)
            if r.status_code == 200:
                body = r.json()
                healthy = {k for k in want if (body.get(k) or {}).get("status") == "healthy"}
        except httpx.HTTPError:
            pass
        if healthy == want:
            nodes = _worker_nodes_alive(state)
            if nodes == set(state["workers"].values()):
                return
        if time.monotonic() > deadline:
            raise ClusterError(f"cluster not ready in time: healthy {sorted(healthy)}, workers {sorted(nodes)}; "
                               f"see {state['log_dir']}")
        time.sleep(1.0)


def _tail(path: Path, n: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def _cluster_processes(state: dict) -> list:
    """Every live process of the cluster: the components, all their descendants (Airflow puts each task
    process in a process group of its own, so a group signal misses them) and any process carrying the
    mark (an orphan reparented away from its component; setproctitle may hide the mark of the others)."""
    import psutil

    found: dict[int, psutil.Process] = {p.pid: p for p in _marked(state["id"])}
    for pid in state["pids"].values():
        try:
            top = psutil.Process(pid)
            if top.status() == psutil.STATUS_ZOMBIE:
                continue
            found[pid] = top
            for child in top.children(recursive=True):
                found[child.pid] = child
        except psutil.Error:
            continue
    return [p for p in found.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def stop(root: Path | None = None, *, grace_s: float = 30.0, progress=print) -> int:
    """Stop the cluster started from ``root``: SIGTERM to every component's process group (workers first,
    so a warm shutdown lets running tasks finish), then SIGKILL to whatever of the cluster is left after
    ``grace_s``. Returns how many processes had to be killed; raises if any survives."""
    import psutil

    root = root or default_root()
    state = read_state(root)
    if not state:
        progress("no cluster state in " + str(root))
        return 0
    tree = {p.pid: p for p in _cluster_processes(state)}
    order = sorted(state["pids"].items(), key=lambda kv: not kv[0].startswith("worker"))
    for _name, pid in order:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap()
        tree.update({p.pid: p for p in _cluster_processes(state)})
        if not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree.values()):
            break
        time.sleep(0.3)
    killed = 0
    for _round in range(3):
        tree.update({p.pid: p for p in _cluster_processes(state)})
        left = [p for p in tree.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not left:
            break
        for pid in state["pids"].values():
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for p in left:
            try:
                p.kill()
                killed += 1
            except psutil.Error:
                pass
        psutil.wait_procs(left, timeout=5)
        _reap()
    remaining = [p.pid for p in tree.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if remaining:
        raise ClusterError(f"processes still running after stop: {remaining}")
    if state.get("throwaway"):  # started on an empty metadata database: nothing will come back for its queue
        _drop_queue(state)
    (root / "cluster.json").unlink(missing_ok=True)
    progress(f"cluster {state['name']} stopped" + (f" ({killed} process(es) killed after {grace_s:.0f}s)"
                                                    if killed else ""))
    return killed


def _drop_queue(state: dict) -> None:
    """Remove the Celery queue of a throwaway cluster (demo, test, bench) and its binding from Redis."""
    try:
        import redis

        redis.Redis.from_url(state["redis_url"], socket_connect_timeout=3).delete(
            state["queue"], f"_kombu.binding.{state['queue']}")
    except Exception:  # noqa: BLE001 - a leftover key is harmless
        pass


def status(root: Path | None = None) -> dict:
    """What runs: per component its pid and whether its group is alive, Airflow's health, live workers."""
    import httpx

    state = read_state(root or default_root())
    if not state:
        return {"running": False}
    out = {"running": True, "api_url": state["api_url"], "name": state["name"],
           "components": {n: {"pid": pid, "alive": _group_alive(pid)} for n, pid in state["pids"].items()},
           "processes": len(_cluster_processes(state))}
    try:
        out["health"] = httpx.get(f"{state['api_url']}/api/v2/monitor/health", timeout=5).json()
    except (httpx.HTTPError, ValueError) as e:
        out["health"] = f"unreachable: {e}"
    out["workers_answering"] = sorted(_worker_nodes_alive(state))
    return out


# --------------------------------------------------------------------------- the REST API, as an operator

class AirflowAPI:
    """Airflow's public REST API (/api/v2) as the cluster's admin, with a token from POST /auth/token."""

    def __init__(self, state: dict):
        import httpx

        self.base = state["api_url"]
        password = json.loads(Path(state["password_file"]).read_text())[state["user"]]
        r = httpx.post(f"{self.base}/auth/token", json={"username": state["user"], "password": password}, timeout=30)
        r.raise_for_status()
        self.http = httpx.Client(base_url=f"{self.base}/api/v2", timeout=60,
                                 headers={"Authorization": f"Bearer {r.json()['access_token']}"})

    def _ok(self, r):
        if r.status_code >= 400:
            raise ClusterError(f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text[:500]}")
        return r.json() if r.content else None

    def get(self, path: str, **params):
        return self._ok(self.http.get(path, params=params))

    def post(self, path: str, body: dict):
        return self._ok(self.http.post(path, json=body))

    def patch(self, path: str, body: dict):
        return self._ok(self.http.patch(path, json=body))

    def close(self) -> None:
        self.http.close()


# --------------------------------------------------------------------------- CLI

def spec_from_env(root: Path | None = None, *, port: int | None = None, workers: int = 2,
                  fresh: bool = False) -> ClusterSpec:
    from returnledger.store import db

    return ClusterSpec(root=root or default_root(), ledger_dsn=db.resolve_dsn(),
                       redis_url=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
                       api_port=port or int(os.environ.get("RETURNLEDGER_CLUSTER_PORT") or 8080),
                       workers=workers, fresh=fresh)


def _cmd_cluster(args) -> int:
    root = Path(args.root) if args.root else None
    if args.action == "start":
        try:
            start(spec_from_env(root, port=args.port, workers=args.workers, fresh=args.fresh))
        except ClusterError as e:
            print(f"cluster: {e}", file=sys.stderr)
            return 1
        print("stop it with: make cluster-stop (or returnledger cluster stop)")
    elif args.action == "stop":
        stop(root)
    else:
        print(json.dumps(status(root), indent=1, default=str))
    return 0


def register_cli(subparsers) -> None:
    """`returnledger cluster start|stop|status`."""
    p = subparsers.add_parser("cluster", help="local Airflow on CeleryExecutor: api-server, scheduler, "
                                              "dag-processor, triggerer, two Celery workers")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--port", type=int, default=None, help="api-server port (default 8080 or RETURNLEDGER_CLUSTER_PORT)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--fresh", action="store_true", help="start with an empty Airflow metadata database")
    p.add_argument("--root", default=None, help="state folder (default .local/cluster)")
    p.set_defaults(func=_cmd_cluster)


if __name__ == "__main__":  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(prog="python -m returnledger.local_cluster")
    register_cli(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args()
    sys.exit(a.func(a))
