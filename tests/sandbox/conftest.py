"""Fixtures for the sandbox tests: generated scenario files and a served ReBound simulator."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def generated_scenario(generated_month, tmp_path_factory):
    """generated_scenario(returns, seed, faults=False) -> Path of a generated month's file (cached)."""
    cache: dict[tuple, Path] = {}
    folder = tmp_path_factory.mktemp("scenarios")

    def make(returns: int, seed: int, faults: bool = False) -> Path:
        key = (returns, seed, faults)
        if key not in cache:
            scenario, _ = generated_month(returns, seed, faults)
            path = folder / f"gen-{returns}-{seed}-{int(faults)}.json"
            path.write_text(json.dumps(scenario))
            cache[key] = path
        return cache[key]

    return make


@pytest.fixture
def serve_rebound(tmp_path):
    """serve_rebound(scenario, **build_kwargs) -> (base_url, app); stopped after the test."""
    from returnledger_dev.sandbox.rebound_sim import build_rebound_app
    from returnledger_dev.sandbox.server import serve_in_thread

    with ExitStack() as stack:

        def start(scenario, port: int | None = None, **kwargs):
            kwargs.setdefault("out_dir", tmp_path / "out")
            app = build_rebound_app(scenario, **kwargs)
            return stack.enter_context(serve_in_thread(app, port=port)), app

        yield start
