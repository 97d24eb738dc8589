"""Fixtures for the console's browser tests: a real site and the system's headless Chromium.

The site is real ``taskfleet`` processes (an NS serving the console on its admin listener, a
task server, agents) started once per test module: starting one costs seconds, and the tests of
a module read or add to it without undoing one another. The browser is the Chromium of the
system's packages driven by Playwright (Playwright's own browser download is not available):
when it is missing the tests fail and say how to install it, because CI (``.ci/run``) installs it.

TLS: the NS serves the console over HTTPS with its self-made certificate. Each browser context
is made with ``ignore_https_errors`` (scoped to that test context; nothing else reaches the
browser) rather than trusting the certificate through Chromium flags: the pin a CLI uses is the
certificate's fingerprint, and Chromium's SPKI pin list wants another hash of another thing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright
from playwright.async_api import expect as pw_expect

from tests.helpers import Fleet, free_port, task_doc

AGENTS = ["web-1", "web-2", "db-1"]
"""The site's agents (real ``taskfleet agent`` processes, enrolled with a token)."""
HELLO = "console-hello"
"""A run-script task saved on the site: each computer prints a line naming itself."""
UI_TIMEOUT_MS = 20_000
"""The bound on every wait for the page (a slow, shared CI machine; never a sleep)."""
SCREENSHOTS_ENV = "TASKFLEET_SCREENSHOTS"
"""A folder that also gets every screenshot (docs/console/ is made from it)."""

pw_expect.set_options(timeout=UI_TIMEOUT_MS)


def chromium_path() -> str:
    """The system's Chromium; fail (not skip) without it: CI installs it, so its absence is a
    broken machine, not a reason to pass without testing the console."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.path.exists("/usr/bin/chromium"):
        found = "/usr/bin/chromium"
    if found is None:
        pytest.fail(
            "Chromium is missing: the console tests drive the system's headless Chromium. "
            "Install it (Debian/Ubuntu: `apt-get install chromium`; .ci/run does this) and run again",
            pytrace=False,
        )
    return found


@dataclass
class Site:
    """A running site and what the tests need to reach it."""

    fleet: Fleet
    console_url: str
    tokens: dict[str, str] = field(default_factory=dict)
    """An admin token per role: ``admin``, ``operator``, ``viewer``."""


async def start_site(fleet: Fleet, agents: list[str] = AGENTS) -> Site:
    """On ``fleet``: NS (console on ``--admin-port``), one TS, ``agents`` online, the task
    ``HELLO`` saved, and a token for each role."""
    port = free_port()
    await fleet.server("ns", 0, "--admin-port", str(port))
    await fleet.taskserver("ts-1")
    for name in agents:
        await fleet.agent(name)
    await fleet.wait_online(agents)
    site = Site(fleet, f"https://127.0.0.1:{port}/", {"admin": fleet.admin_token})
    async with fleet.admin() as c:
        await c.call("task.add", text=task_doc(HELLO, "echo hello from %COMPUTERNAME%"))
        for role in ("operator", "viewer"):
            made = await c.call("admins.add", name=f"console-{role}", role=role)
            site.tokens[role] = made["token"]
    return site


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    """One real site for the whole module; every process is ended at the end."""
    fleet = Fleet(tmp_path_factory.mktemp("console-site"))
    try:
        yield await start_site(fleet)
    finally:
        await fleet.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    """The system's headless Chromium, one per module (each test gets its own context)."""
    path = chromium_path()
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=path, headless=True)
        try:
            yield b
        finally:
            await b.close()


SignIn = Callable[..., Awaitable[Page]]


@pytest_asyncio.fixture(loop_scope="module")
async def sign_in(site: Site, browser: Browser) -> AsyncIterator[SignIn]:
    """``await sign_in("viewer")``: a new tab (its own context, so its own sessionStorage)
    signed in with that role's token (or ``token=``, an admin of that role), on the Fleet page."""
    contexts = []

    async def open_as(role: str, token: str | None = None) -> Page:
        ctx = await browser.new_context(
            ignore_https_errors=True, viewport={"width": 1280, "height": 800}
        )
        contexts.append(ctx)
        page = await ctx.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        await page.goto(site.console_url)
        await submit_token(page, token or site.tokens[role])
        await pw_expect(page.get_by_test_id("admin-role")).to_have_text(role)
        await pw_expect(page.locator('[data-page="fleet"]')).to_be_visible()
        return page

    try:
        yield open_as
    finally:
        for ctx in contexts:
            await ctx.close()


async def submit_token(page: Page, token: str) -> None:
    """Type ``token`` into the sign-in form and send it."""
    await page.get_by_test_id("signin-token").fill(token)
    await page.get_by_test_id("signin-submit").click()


Shot = Callable[[Page, str], Awaitable[Path]]


@pytest.fixture
def shot(tmp_path: Path) -> Shot:
    """``await shot(page, "fleet")``: a PNG of the page in the test's output folder, and also in
    ``$TASKFLEET_SCREENSHOTS`` when set (how docs/console/ is made)."""

    async def take(page: Page, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        await page.screenshot(path=str(path), full_page=False)
        extra = os.environ.get(SCREENSHOTS_ENV)
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(extra) / path.name)
        return path

    return take
