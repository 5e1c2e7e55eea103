"""What the browser tests of the console share: headless Chromium at its explicit path (the Debian
package's, not a browser build of Playwright's own), their markers, the real Airflow login and a token from
the api-server (the demo month they serve is tests/browser/conftest.py's ``demo``)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
#: the month the demo runs: October with faults, closed on November 3rd
DEMO_SCENARIO = ROOT / "scenarios" / "small-month-faults.json"

#: every browser test module's pytestmark
MARKS = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]


def launch(p):
    """Headless Chromium from ``sync_playwright()``'s ``p``."""
    return p.chromium.launch(
        executable_path=str(CHROMIUM),
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )


def sign_in(page, base: str, user: str, password: str) -> None:
    """From the console's 401 page: its login link, the real Airflow login form, back in the console."""
    page.click("#login-link")
    page.wait_for_url("**/auth/login**")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/returnledger/**")


def login(
    browser,
    base: str,
    path: str,
    user: str,
    password: str,
    *,
    height: int = 1000,
    timeout: float = 30_000,
    accept_downloads: bool = False,
):
    """A page of a browser context of its own, signed in as ``user`` from ``path`` (refused first: 401)."""
    context = browser.new_context(
        viewport={"width": 1400, "height": height}, accept_downloads=accept_downloads
    )
    page = context.new_page()
    page.set_default_timeout(timeout)
    assert page.goto(f"{base}{path}").status == 401
    sign_in(page, base, user, password)
    return page


def api_token(base: str, user: str, password: str) -> str:
    """A real token from the api-server's ``POST /auth/token``."""
    return httpx.post(f"{base}/auth/token", json={"username": user, "password": password}, timeout=30).json()[
        "access_token"
    ]
