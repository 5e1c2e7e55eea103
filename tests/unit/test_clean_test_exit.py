"""A clean test run ends without ``--- Logging error ---`` (issue 24): the embedded PostgreSQL's handle is
given back while pytest's streams are open (tests/conftest.py, store.db.release_embedded), not from
pgserver's atexit hook after pytest closed them. Runs pytest on one small test against a private
embedded server (its own RETURNLEDGER_HOME), stopped afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = ("tests/integration/test_amazon_export.py", "-k", "good_file")

pytestmark = pytest.mark.slow


def test_a_run_on_the_embedded_server_ends_without_logging_errors():
    # not under pytest's tmp_path: that is root's private folder, which pgserver's 'pgserver' user (it
    # runs postgres as that user under root) cannot enter
    home = Path(tempfile.mkdtemp(prefix="rl-clean-exit-"))
    home.chmod(0o755)
    env = {
        k: v for k, v in os.environ.items() if k not in ("RETURNLEDGER_DSN", "RETURNLEDGER_TEST_SERVER_DSN")
    }
    env["RETURNLEDGER_HOME"] = str(home)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TARGET],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        stop = "from returnledger.store import db; db.stop_embedded()"
        subprocess.run([sys.executable, "-c", stop], env=env, capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[out.find("ERRORS") :][:3000]
    assert "1 passed" in out, out[-3000:]
    assert "Logging error" not in out, out[-3000:]
