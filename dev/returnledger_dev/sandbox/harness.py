"""Both simulators for one scenario, in-process: what tests, the demo runner and ``serve`` use.

``run_sandbox`` starts the simulated ReBound API and the simulated SP-API on
loopback ports in background threads and yields a ``Sandbox`` with their URLs
and the sandbox's fixed, fake credentials (they guard nothing real and are
the same ones airflow_settings.yaml points at).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from returnledger_dev.sandbox.scenario import Scenario, load_scenario

REBOUND_CLIENT_ID = "sandbox-client"
REBOUND_CLIENT_SECRET = "sandbox-secret"
LWA_CLIENT_ID = "sandbox-lwa-client"
LWA_CLIENT_SECRET = "sandbox-lwa-secret"
LWA_REFRESH_TOKEN = "sandbox-refresh-token"
#: Amazon's published default quota for the vendor operations (requests/s, burst)
DEFAULT_RATE, DEFAULT_BURST = 10.0, 10


@dataclass
class Sandbox:
    """Where the running simulators are and how to log in to them."""

    scenario: Scenario
    out_dir: Path
    landing_dir: Path
    rebound_url: str
    amazon_url: str
    rebound_client_id: str = REBOUND_CLIENT_ID
    rebound_client_secret: str = REBOUND_CLIENT_SECRET
    lwa_client_id: str = LWA_CLIENT_ID
    lwa_client_secret: str = LWA_CLIENT_SECRET
    lwa_refresh_token: str = LWA_REFRESH_TOKEN
    rebound_app: Any = field(default=None, repr=False)
    amazon_app: Any = field(default=None, repr=False)

    @property
    def lwa_url(self) -> str:
        return f"{self.amazon_url}/auth/o2/token"

    @property
    def amazon_extra(self) -> dict:
        """The ``amazon_sp_api`` connection extra for this sandbox (see airflow_adapter).

        The rate is Amazon's documented default, never the scenario's ``faults.amazon.throttle``: the
        client learns the simulator's plan from its answers (``x-amzn-RateLimit-Limit``, 429s), as in
        production."""
        s = self.scenario
        return {
            "refresh_token": self.lwa_refresh_token,
            "lwa_url": self.lwa_url,
            "marketplace_id": s.vendor.marketplace_id,
            "region": "eu",
            "rate_per_s": DEFAULT_RATE,
            "burst": DEFAULT_BURST,
            "party_id": s.vendor.party_id,
            "warehouse_id": s.vendor.warehouse_id,
            "currency": s.vendor.currency,
        }

    def rebound_client(self, **kwargs):
        """A production ReboundClient pointed at the simulated ReBound."""
        from returnledger.clients.rebound import ReboundClient

        return ReboundClient(self.rebound_url, self.rebound_client_id, self.rebound_client_secret, **kwargs)

    def dump(self) -> dict:
        """Ask the SP-API simulator to write its output files (inventory, returns export)."""
        import httpx

        r = httpx.post(f"{self.amazon_url}/_sandbox/dump", timeout=60)
        r.raise_for_status()
        return r.json()


def _scenario_of(scenario_path_or_obj: str | Path | Scenario | dict) -> Scenario:
    if isinstance(scenario_path_or_obj, Scenario):
        return scenario_path_or_obj
    if isinstance(scenario_path_or_obj, dict):
        return Scenario.from_dict(scenario_path_or_obj)
    return load_scenario(scenario_path_or_obj)


def spapi_builder():
    """A2's SP-API simulator factory, imported late so the ReBound half works alone."""
    from returnledger_dev.sandbox.spapi_sim import build_spapi_app

    return build_spapi_app


@contextmanager
def run_sandbox(
    scenario_path_or_obj: str | Path | Scenario | dict,
    out_dir: str | Path,
    *,
    seed: int = 0,
    faults: bool = True,
    timeout_delay_s: float = 3.0,
    landing_dir: Path | None = None,
    rebound_port: int | None = None,
    amazon_port: int | None = None,
    host: str = "127.0.0.1",
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    token_ttl_s: float = 3600,
) -> Iterator[Sandbox]:
    """Serve both simulators until the block ends.

    ``faults=False`` serves the scenario without its injected faults (outcomes
    must be the same either way, so this only makes runs faster)."""
    from returnledger_dev.sandbox.rebound_sim import build_rebound_app
    from returnledger_dev.sandbox.server import serve_in_thread

    scenario = _scenario_of(scenario_path_or_obj)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    landing = Path(landing_dir) if landing_dir else out / "landing"
    # shallow copy without faults: the big lists are shared, not copied
    raw = scenario.raw if faults else dict(scenario.raw, faults={})
    rebound_app = build_rebound_app(
        scenario,
        out_dir=out,
        client_id=REBOUND_CLIENT_ID,
        client_secret=REBOUND_CLIENT_SECRET,
        seed=seed,
        faults=faults,
        timeout_delay_s=timeout_delay_s,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        token_ttl_s=token_ttl_s,
    )
    amazon_app = spapi_builder()(
        raw,
        out_dir=out,
        seed=seed,
        landing_dir=landing,
        lwa_client_id=LWA_CLIENT_ID,
        lwa_client_secret=LWA_CLIENT_SECRET,
        refresh_token=LWA_REFRESH_TOKEN,
    )
    with ExitStack() as stack:
        rebound_url = stack.enter_context(serve_in_thread(rebound_app, host=host, port=rebound_port))
        amazon_url = stack.enter_context(serve_in_thread(amazon_app, host=host, port=amazon_port))
        yield Sandbox(
            scenario=scenario,
            out_dir=out,
            landing_dir=landing,
            rebound_url=rebound_url,
            amazon_url=amazon_url,
            rebound_app=rebound_app,
            amazon_app=amazon_app,
        )
