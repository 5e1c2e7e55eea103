"""docker-compose.yaml, Dockerfile and .dockerignore, checked as far as a machine without a Docker engine
allows: the rules of issue 13 on the parsed files, ``docker compose config`` where a compose binary is
installed, and the variables the compose file gives Airflow against the ones ``make cluster`` gives it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
COMMON = COMPOSE["x-airflow-common"]
ENV = COMMON["environment"]
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
)
_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def _init_script() -> str:
    return "\n".join(COMPOSE["services"]["airflow-init"]["command"])


def test_every_airflow_container_gets_the_common_environment():
    for name in AIRFLOW_SERVICES:
        env = COMPOSE["services"][name]["environment"]
        for key, value in ENV.items():
            assert env.get(key) == value, (name, key)


def test_one_jwt_secret_fernet_key_and_api_secret_for_all_required_from_env():
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY"):
        # ${NAME:?message}: compose refuses to start without it (an empty Fernet key was the old default)
        assert re.fullmatch(r"\$\{" + key + r":\?[^}]+\}", ENV[key]), ENV[key]
    assert ENV["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"


def test_init_creates_folders_database_role_and_ledger():
    init = COMPOSE["services"]["airflow-init"]
    script = _init_script()
    assert init["user"] == "0:0"
    assert re.search(
        r"mkdir -p .*/opt/airflow/logs.*/opt/airflow/dags.*/opt/airflow/plugins.*/opt/airflow/config", script
    )
    assert re.search(r'chown -R "\$\{AIRFLOW_UID:-50000\}:0" .*/opt/airflow/logs', script)
    assert "/opt/returnledger/.local" in script.split("chown", 1)[1]
    assert "airflow db migrate" in script
    assert (
        "returnledger migrate --create-database --owner returnledger_owner --runtime-role returnledger"
        in script
    )
    assert "returnledger reference load" in script
    assert init["environment"]["RETURNLEDGER_DSN"].endswith("@postgres:5432/returnledger")
    assert "simple_auth_manager_passwords.json" in script


def test_dags_reach_the_ledger_as_the_least_privilege_role():
    from returnledger.store.migrate import LEDGER_ROLE

    conn = ENV["AIRFLOW_CONN_RETURNS_DB"]
    assert conn.startswith(f"postgresql://{LEDGER_ROLE}:${{RETURNLEDGER_LEDGER_PASSWORD:?")
    assert conn.endswith("@postgres:5432/returnledger")
    assert "airflow:" not in conn  # never the metadata database's superuser


def _dockerfile_lines() -> list[str]:
    docker = (ROOT / "Dockerfile").read_text()
    return [ln.strip() for ln in docker.splitlines() if ln.strip() and not ln.startswith("#")]


def test_returnledger_home_is_writable_in_the_image():
    docker = (ROOT / "Dockerfile").read_text()
    assert ENV["RETURNLEDGER_HOME"] == "/opt/returnledger"
    assert "returnledger-local:/opt/returnledger/.local" in COMMON["volumes"]
    # the project is copied owned by airflow (group 0, group-writable) before pip runs as airflow
    assert re.search(r"chown -R airflow:0 /opt/returnledger", docker)
    lines = _dockerfile_lines()
    first_pip = next(i for i, ln in enumerate(lines) if "pip install" in ln)
    users = [ln for ln in lines[:first_pip] if ln.startswith("USER ")]
    assert users and users[-1] == "USER airflow"
    assert not [ln for ln in lines[first_pip:] if ln.startswith("USER ")]
    for ln in lines:
        if ln.startswith("COPY"):
            assert "--chown=airflow:0" in ln, ln


def test_the_image_installs_the_runtime_lock_and_bakes_in_package_dags_and_plugins():
    """issue 24: the image installs requirements-runtime.txt (never the dev lock), the package as a
    regular install (not editable), and carries the DAGs and the plugin itself; pip check gates the build."""
    lines = _dockerfile_lines()
    pips = [ln for ln in lines if "pip install" in ln]
    assert any("-r /opt/returnledger/requirements-runtime.txt" in ln for ln in pips), pips
    assert not [ln for ln in lines if "requirements.txt" in ln.replace("requirements-runtime.txt", "")]
    assert not [ln for ln in pips if re.search(r"\s(-e|--editable)\s", ln)], pips
    package = next(ln for ln in pips if "--no-deps" in ln)
    assert package.endswith("&& pip check"), package
    copies = {ln.split()[-2]: ln.split()[-1] for ln in lines if ln.startswith("COPY")}
    assert copies["dags"] == ENV["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/airflow/dags"
    assert copies["plugins"] == ENV["AIRFLOW__CORE__PLUGINS_FOLDER"] == "/opt/airflow/plugins"
    # `returnledger reference load` reads RETURNLEDGER_HOME/include/reference
    assert copies["include/reference"] == ENV["RETURNLEDGER_HOME"] + "/include/reference"
    assert "dev" not in copies and "tests" not in copies


def test_production_compose_mounts_no_source_and_the_dev_override_does():
    source = ("./dags", "./plugins", "./include")
    for name in AIRFLOW_SERVICES:
        mounts = COMPOSE["services"][name].get("volumes", [])
        assert not [m for m in mounts if m.startswith(source)], (name, mounts)
    dev = yaml.safe_load((ROOT / "docker-compose.dev.yaml").read_text())
    for name in AIRFLOW_SERVICES:
        service = dev["services"][name]
        mounts = {m.split(":")[0]: m.split(":")[1] for m in service["volumes"]}
        assert mounts["./dags"] == "/opt/airflow/dags" and mounts["./plugins"] == "/opt/airflow/plugins"
        # the installed package is not editable: the mounted source goes first on PYTHONPATH
        assert mounts["./include/returnledger"] == service["environment"]["PYTHONPATH"] + "/returnledger"


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = {
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    assert {".venv", ".local", ".env", ".git", "out", "logs"} <= ignored
    docker = (ROOT / "Dockerfile").read_text()
    for copied in re.findall(r"^COPY (?:--chown=\S+ )?(.+) \S+$", docker, re.M):
        for name in copied.split():
            assert name not in ignored, f"{name} is copied by the Dockerfile but ignored"


def test_secrets_only_from_env_file():
    example = {
        ln.split("=", 1)[0]
        for ln in (ROOT / ".env.example").read_text().splitlines()
        if "=" in ln and not ln.startswith("#")
    }
    # $${name} is a shell variable of a service's script (compose's escaped dollar), not compose's
    refs = set(re.findall(r"(?<!\$)\$\{(\w+)", (ROOT / "docker-compose.yaml").read_text()))
    optional = {k for k in refs if re.search(r"\$\{" + k + ":-", (ROOT / "docker-compose.yaml").read_text())}
    assert refs - optional <= example, sorted(refs - optional - example)


def _compose_binary() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) and subprocess.run([*cmd, "version"], capture_output=True).returncode == 0:
            return cmd
    return None


def test_docker_compose_config(tmp_path):
    """``docker compose config``: the file is valid compose, refuses to start without the secrets, and
    renders with .env.example once they are filled in (needs the compose binary, no engine)."""
    cmd = _compose_binary()
    if cmd is None:
        pytest.skip(
            "no docker compose / docker-compose binary (apt-get install docker-compose); "
            "the rules above still hold for the parsed file"
        )
    shutil.copy(ROOT / "docker-compose.yaml", tmp_path / "docker-compose.yaml")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "postgres_password").write_text("superuser-test\n")
    env = (ROOT / ".env.example").read_text()
    (tmp_path / ".env").write_text(env)
    refused = subprocess.run(
        [*cmd, "config", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0 and "FERNET_KEY" in refused.stderr + refused.stdout
    filled = re.sub(
        r"^(AIRFLOW__CORE__FERNET_KEY|AIRFLOW__API_AUTH__JWT_SECRET|AIRFLOW__API__SECRET_KEY"
        r"|_AIRFLOW_WWW_USER_PASSWORD|AIRFLOW_DB_PASSWORD|RETURNLEDGER_LEDGER_PASSWORD)=$",
        r"\1=test-value",
        env,
        flags=re.M,
    )
    (tmp_path / ".env").write_text(filled)
    done = subprocess.run([*cmd, "config"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)
    worker = rendered["services"]["airflow-worker"]["environment"]
    assert worker["AIRFLOW__CORE__FERNET_KEY"] == "test-value"
    assert (
        worker["AIRFLOW_CONN_RETURNS_DB"] == "postgresql://returnledger:test-value@postgres:5432/returnledger"
    )


def test_docker_compose_config_with_the_dev_override(tmp_path):
    """``docker compose -f docker-compose.yaml -f docker-compose.dev.yaml config``: the override renders
    over the production file; the production file alone mounts no source, with it the workers get the
    DAGs, the plugin and the package's source and keep the production environment (issue 24)."""
    cmd = _compose_binary()
    if cmd is None:
        pytest.skip("no docker compose / docker-compose binary (apt-get install docker-compose)")
    for name in ("docker-compose.yaml", "docker-compose.dev.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "postgres_password").write_text("superuser-test\n")
    (tmp_path / ".env").write_text(
        re.sub(r"^(\w+)=$", r"\1=test-value", (ROOT / ".env.example").read_text(), flags=re.M)
    )

    def render(*files: str) -> dict:
        args = [a for f in files for a in ("-f", f)]
        done = subprocess.run(
            [*cmd, *args, "config"], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return yaml.safe_load(done.stdout)["services"]

    def targets(service: dict) -> dict[str, str]:
        out = {}
        for v in service.get("volumes", []):
            if isinstance(v, dict):
                out[v["target"]] = v.get("source", "")
            else:
                src, dst = v.split(":")[:2]
                out[dst] = src
        return out

    prod = render("docker-compose.yaml")
    dev = render("docker-compose.yaml", "docker-compose.dev.yaml")
    for name in AIRFLOW_SERVICES:
        assert "/opt/airflow/dags" not in targets(prod[name]), name
        mounted = targets(dev[name])
        assert mounted["/opt/airflow/dags"].endswith("/dags"), (name, mounted)
        assert mounted["/opt/returnledger/src/returnledger"].endswith("include/returnledger"), mounted
        assert "/opt/airflow/logs" in mounted  # the production mounts stay
        assert dev[name]["environment"]["PYTHONPATH"] == "/opt/returnledger/src"
        assert dev[name]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


# --- the compose file and `make cluster` configure Airflow alike ------------------------------------------

#: variables whose value is host-specific (hosts, ports, folders, secrets): compared by shape only
HOST_SPECIFIC = {
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": lambda c, k: c.endswith(".json"),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": lambda c, k: (
        c.startswith("postgresql+psycopg2://") and k.startswith("postgresql+psycopg2://")
    ),
    "AIRFLOW__CELERY__RESULT_BACKEND": lambda c, k: (
        c.startswith("db+postgresql://") and k.startswith("db+postgresql://")
    ),
    "AIRFLOW__CELERY__BROKER_URL": lambda c, k: c.startswith("redis://") and k.startswith("redis://"),
    "AIRFLOW__OPERATORS__DEFAULT_QUEUE": lambda c, k: bool(c) and bool(k),  # a queue per local cluster
    "AIRFLOW__CORE__FERNET_KEY": lambda c, k: bool(k),
    "AIRFLOW__API_AUTH__JWT_SECRET": lambda c, k: len(k) >= 32,
    "AIRFLOW__API__SECRET_KEY": lambda c, k: len(k) >= 32,
    "AIRFLOW__API__BASE_URL": lambda c, k: k.startswith("http://127.0.0.1:"),
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": lambda c, k: (
        c.endswith(":8080/execution/") and k.endswith("/execution/")
    ),
    "AIRFLOW__CORE__DAGS_FOLDER": lambda c, k: Path(c).name == Path(k).name == "dags",
    "AIRFLOW__CORE__PLUGINS_FOLDER": lambda c, k: Path(c).name == Path(k).name == "plugins",
    "AIRFLOW__LOGGING__BASE_LOG_FOLDER": lambda c, k: Path(c).name == Path(k).name == "logs",
    "RETURNLEDGER_HOME": lambda c, k: (Path(k) / "include" / "returnledger").is_dir(),
    "AIRFLOW_CONN_RETURNS_DB": lambda c, k: (
        c.startswith("postgresql://returnledger:") and json.loads(k)["login"] == "returnledger"
    ),
}


@pytest.fixture
def cluster_env(tmp_path):
    from returnledger_dev.cluster import spec as lc

    spec = lc.ClusterSpec(
        root=tmp_path, ledger_dsn="postgresql://postgres@127.0.0.1:5432/ledger_x", api_port=8099
    )
    env = lc.airflow_env(
        spec,
        api_port=8099,
        meta_dsn=lc.metadata_dsn(spec.ledger_dsn),
        password_file=tmp_path / "passwords.json",
    )
    env["AIRFLOW_CONN_RETURNS_DB"] = lc.connections_env(spec)["AIRFLOW_CONN_RETURNS_DB"]
    return env


def test_cluster_sets_exactly_the_variables_the_compose_file_sets(cluster_env):
    from returnledger_dev.cluster import spec as lc

    assert set(cluster_env) == set(ENV), {
        "only in compose": sorted(set(ENV) - set(cluster_env)),
        "only in the cluster": sorted(set(cluster_env) - set(ENV)),
    }
    assert not set(lc.LOCAL_ONLY) & set(ENV)
    for key, compose_value in ENV.items():
        value = _DEFAULT.sub(r"\2", str(compose_value))  # ${NAME:-default} (tunables): the default
        if key in HOST_SPECIFIC:
            assert HOST_SPECIFIC[key](value, cluster_env[key]), (key, value, cluster_env[key])
        else:
            assert value == cluster_env[key], (key, value, cluster_env[key])


def test_connection_test_button_is_enabled_in_compose_the_cluster_and_make_airflow(cluster_env):
    """Airflow ships ``[core] test_connection`` Disabled: without it the hooks' test_connection is
    unreachable from the UI and the REST API (issue 24)."""
    assert ENV["AIRFLOW__CORE__TEST_CONNECTION"] == "Enabled"
    assert cluster_env["AIRFLOW__CORE__TEST_CONNECTION"] == "Enabled"
    airflow_target = (ROOT / "Makefile").read_text().split("\nairflow:", 1)[1].split("\n\n", 1)[0]
    assert "AIRFLOW__CORE__TEST_CONNECTION=Enabled" in airflow_target
    assert (
        'setdefault("AIRFLOW__CORE__TEST_CONNECTION", "Enabled")'
        in (ROOT / "dev" / "returnledger_dev" / "local_airflow.py").read_text()
    )


def test_no_airflow_2_scheduler_parsing_processes_anywhere():
    """Airflow 3 reads ``[dag_processor] parsing_processes``; the [scheduler] name is silently ignored."""
    stale = "AIRFLOW__SCHEDULER__" + "PARSING_PROCESSES"
    for path in [
        ROOT / "Makefile",
        ROOT / "docker-compose.yaml",
        *(ROOT / "dev").rglob("*.py"),
        *(ROOT / "docs").rglob("*.md"),
    ]:
        assert stale not in path.read_text(), path
    assert "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES=1" in (ROOT / "Makefile").read_text()
