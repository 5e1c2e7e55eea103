"""Fixtures for the sandbox tests: scenario files (shared and generated) and a served ReBound simulator."""
from __future__ import annotations

import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def scenarios_dir(shared_dir) -> Path:
    return shared_dir / "scenarios"


@pytest.fixture(scope="session")
def generated_scenario(scenarios_dir, tmp_path_factory):
    """generated_scenario(returns, seed, faults=False) -> Path of a generate.py file (cached per session)."""
    cache: dict[tuple, Path] = {}
    folder = tmp_path_factory.mktemp("scenarios")

    def make(returns: int, seed: int, faults: bool = False) -> Path:
        key = (returns, seed, faults)
        if key not in cache:
            prefix = folder / f"gen-{returns}-{seed}-{int(faults)}"
            cmd = [sys.executable, str(scenarios_dir / "generate.py"), "--returns", str(returns), "--seed", str(seed),
                   "--out", str(prefix)] + (["--faults"] if faults else [])
            subprocess.run(cmd, check=True, capture_output=True)
            cache[key] = prefix.with_suffix(".json")
        return cache[key]

    return make


@pytest.fixture
def serve_rebound(tmp_path):
    """serve_rebound(scenario, **build_kwargs) -> (base_url, app); stopped after the test."""
    from returnledger.sandbox.rebound_sim import build_rebound_app
    from returnledger.sandbox.server import serve_in_thread

    with ExitStack() as stack:
        def start(scenario, port: int | None = None, **kwargs):
            kwargs.setdefault("out_dir", tmp_path / "out")
            app = build_rebound_app(scenario, **kwargs)
            return stack.enter_context(serve_in_thread(app, port=port)), app

        yield start
