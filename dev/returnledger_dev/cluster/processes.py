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
As on separate hosts, each component runs in folders of its own and what tasks share is in S3, a moto
server the cluster starts first and stops last (``returnledger_dev.cluster.hosts``).

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

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC
from pathlib import Path

from returnledger_dev.cluster import hosts
from returnledger_dev.cluster.spec import (
    ADMIN_USER,
    COMPONENTS,
    MARK,
    TUNING,
    WORKER_HOSTNAME_ENV,
    ClusterSpec,
    admin_password,
    airflow_env,
    connections_env,
    default_root,
    free_port,
    metadata_dsn,
    port_free,
    role_dsn,
)
from returnledger_dev.local_airflow import ensure_database, group_alive, tail


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


def _reap() -> None:
    """Collect any of our own children that exited (so they do not linger as zombies)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _spawn(args: list[str], env: dict, log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def check_redis(url: str, timeout: float = 3.0) -> str | None:
    """None when Redis answers PING at ``url``, else why not."""
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
        return None
    except Exception as e:
        return f"{type(e).__name__}: {e}"


class ClusterError(RuntimeError):
    pass


def start(spec: ClusterSpec, *, progress=print, timeout_s: float = 300) -> dict:
    """Start the cluster described by ``spec``; returns its state (also written to ``spec.state_file``)."""
    from returnledger.store import migrate
    from returnledger_dev.settings import load_settings

    old = read_state(spec.root)
    if old and _cluster_processes(old):
        raise ClusterError(f"a cluster is already running from {spec.root} ({old['api_url']}); stop it first")
    why = check_redis(spec.redis_url)
    if why:
        raise ClusterError(f"Redis at {spec.redis_url} does not answer ({why}); set REDIS_URL")
    if not port_free(spec.api_port):
        raise ClusterError(f"port {spec.api_port} is taken; choose another with --port")
    t0 = time.monotonic()
    spec.root.mkdir(parents=True, exist_ok=True)
    (spec.root / "airflow").mkdir(exist_ok=True)
    cluster_id = f"{spec.name}-{uuid.uuid4().hex[:12]}"

    # the ledger, owned by a role nobody logs in as; the DAGs use the least-privilege runtime role
    applied = migrate.migrate(
        spec.ledger_dsn,
        runtime=spec.ledger_role,
        runtime_password=os.environ.get("RETURNLEDGER_LEDGER_PASSWORD"),
    )
    if spec.load_reference:
        from datetime import datetime

        from returnledger.reference import load as reference

        reference.load_reference(spec.ledger_dsn, at=datetime.now(UTC), actor="cluster start")
    progress(f"ledger ready as role {spec.ledger_role} ({len(applied)} migration(s) applied)")

    import psycopg

    meta = metadata_dsn(spec.ledger_dsn)
    ensure_database(spec.ledger_dsn, psycopg.conninfo.conninfo_to_dict(meta)["dbname"], fresh=spec.fresh)
    password_file, _password = admin_password(spec.root)
    # nothing of this shell's AWS settings: the store is reached through aws_default only
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RETURNLEDGER_DSN", "AWS_"))}
    env.update(airflow_env(spec, api_port=spec.api_port, meta_dsn=meta, password_file=password_file))
    env.update(connections_env(spec))
    env.update(spec.extra_env)
    env.update(
        {
            "AIRFLOW_HOME": str(spec.root / "airflow"),
            MARK: cluster_id,
            "AIRFLOW__API__PORT": str(spec.api_port),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    pools = load_settings()["pools"]
    init = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys; from returnledger_dev.local_airflow import init_metadata; "
            "init_metadata(json.loads(sys.argv[1]))",
            json.dumps(pools),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if init.returncode != 0:
        raise ClusterError("airflow db migrate failed:\n" + (init.stdout + init.stderr)[-3000:])
    progress(f"Airflow metadata database ready ({time.monotonic() - t0:.0f}s)")

    spec.log_dir.mkdir(parents=True, exist_ok=True)
    procs: dict[str, int] = {}
    workers: dict[str, str] = {}
    state = {
        "id": cluster_id,
        "name": spec.name,
        "root": str(spec.root),
        "api_url": f"http://127.0.0.1:{spec.api_port}",
        "user": ADMIN_USER,
        "password_file": str(password_file),
        "redis_url": spec.redis_url,
        "queue": spec.queue,
        "metadata_dsn": meta,
        "ledger_dsn": role_dsn(spec.ledger_dsn, spec.ledger_role),
        "log_dir": str(spec.log_dir),
        "pids": procs,
        "workers": workers,
        "started_at": time.time(),
        "throwaway": spec.fresh,
    }
    if spec.fresh:
        hosts.clear_hosts(spec.root)
    try:
        # the shared object store: S3 on loopback (hosts.py), up before anything that may use it
        s3_port = free_port()
        s3_dirs = hosts.host_dirs(spec.root, "s3")
        procs["s3"] = _spawn(hosts.s3_command(s3_port), env, spec.log_dir / "s3.log", cwd=s3_dirs["cwd"]).pid
        state["s3_url"] = hosts.s3_url(s3_port)
        _write_state(spec.root, state)  # stop() finds the server if what follows fails
        hosts.wait_s3(state["s3_url"], alive=lambda: group_alive(procs["s3"]))
        env.update(hosts.store_env(state["s3_url"]))
        progress(f"object store: s3://{hosts.BUCKET}/ on {state['s3_url']} (aws_default)")
        for name in COMPONENTS:
            args = [_airflow(), name]
            if name == "api-server":
                args += ["--host", "127.0.0.1", "--port", str(spec.api_port)]
            dirs = hosts.host_dirs(spec.root, name)
            cenv = dict(env, **hosts.host_env(dirs))
            procs[name] = _spawn(args, cenv, spec.log_dir / f"{name}.log", cwd=dirs["cwd"]).pid
        for i in range(1, spec.workers + 1):
            node = f"{spec.name}-worker-{i}"
            dirs = hosts.host_dirs(spec.root, f"worker-{i}")  # its own disk, as on a host of its own
            wenv = dict(
                env,
                **hosts.host_env(dirs),
                **{
                    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "returnledger_dev.cluster.spec.worker_hostname",
                    WORKER_HOSTNAME_ENV: node,
                    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                },
            )
            args = [
                _airflow(),
                "celery",
                "worker",
                "--celery-hostname",
                f"{node}@%h",
                "--concurrency",
                TUNING["AIRFLOW__CELERY__WORKER_CONCURRENCY"],
                "--queues",
                spec.queue,
            ]
            procs[f"worker-{i}"] = _spawn(args, wenv, spec.log_dir / f"worker-{i}.log", cwd=dirs["cwd"]).pid
            workers[f"worker-{i}"] = node
        _write_state(spec.root, state)
        _wait_ready(state, deadline=time.monotonic() + timeout_s, progress=progress)
    except BaseException:
        stop(spec.root, progress=lambda *_: None)
        raise
    state["ready_s"] = round(time.monotonic() - t0, 1)
    _write_state(spec.root, state)
    progress(
        f"cluster {spec.name} up in {state['ready_s']}s: {state['api_url']} (user {ADMIN_USER}, password in "
        f"{password_file}); workers {', '.join(workers.values())} on queue {spec.queue}; logs {spec.log_dir}"
    )
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
    except Exception:
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
        dead = [n for n, pid in state["pids"].items() if not group_alive(pid)]
        _reap()
        if dead:
            tails = "\n".join(
                f"--- {n}.log\n" + "\n".join(tail(Path(state["log_dir"]) / f"{n}.log", 15)) for n in dead
            )
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
            raise ClusterError(
                f"cluster not ready in time: healthy {sorted(healthy)}, workers {sorted(nodes)}; "
                f"see {state['log_dir']}"
            )
        time.sleep(1.0)


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
    # workers first (a warm shutdown lets running tasks finish), the object store last
    order = sorted(
        state["pids"].items(), key=lambda kv: 0 if kv[0].startswith("worker") else 1 + (kv[0] == "s3")
    )
    for _name, pid in order:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
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
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
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
    progress(
        f"cluster {state['name']} stopped"
        + (f" ({killed} process(es) killed after {grace_s:.0f}s)" if killed else "")
    )
    return killed


def _drop_queue(state: dict) -> None:
    """Remove the Celery queue of a throwaway cluster (demo, test, bench) and its binding from Redis."""
    try:
        import redis

        redis.Redis.from_url(state["redis_url"], socket_connect_timeout=3).delete(
            state["queue"], f"_kombu.binding.{state['queue']}"
        )
    except Exception:
        pass


def status(root: Path | None = None) -> dict:
    """What runs: per component its pid and whether its group is alive, Airflow's health, live workers."""
    import httpx

    state = read_state(root or default_root())
    if not state:
        return {"running": False}
    out = {
        "running": True,
        "api_url": state["api_url"],
        "name": state["name"],
        "components": {n: {"pid": pid, "alive": group_alive(pid)} for n, pid in state["pids"].items()},
        "processes": len(_cluster_processes(state)),
    }
    try:
        out["health"] = httpx.get(f"{state['api_url']}/api/v2/monitor/health", timeout=5).json()
    except (httpx.HTTPError, ValueError) as e:
        out["health"] = f"unreachable: {e}"
    out["workers_answering"] = sorted(_worker_nodes_alive(state))
    return out
