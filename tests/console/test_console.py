"""The console in a real browser (headless Chromium) against a real site (NS, TS, agents).

One site for the module (see conftest.py); each test opens its own browser context, so each
signs in on its own. The tests that add to the site (a run, a new key) check only what they add.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.async_api import Browser, Page
from playwright.async_api import expect as pw_expect

from tests.console.conftest import AGENTS, HELLO, UI_TIMEOUT_MS, Shot, SignIn, Site, submit_token
from tests.helpers import until

pytestmark = pytest.mark.asyncio(loop_scope="module")

PAGES = {
    "fleet": "#/fleet",
    "computers": "#/computers",
    "computer": f"#/computer/{AGENTS[0]}",
    "tasks": "#/tasks",
    "document": f"#/task/{HELLO}",
    "launch": "#/launch",
    "runs": "#/runs",
    "keys": "#/keys",
    "tokens": "#/tokens",
    "admins": "#/admins",
    "audit": "#/audit",
    "messages": "#/messages",
    "schedules": "#/schedules",
    "policies": "#/policies",
}
"""Every page of the console (but the Run page, which needs a run) and a route that shows it."""

CALL_AS = """async ([token, op, args]) => {
    const api = await (await import("/static/js/api.js")).connect(token);
    try { await api.call(op, args); return {ok: true}; }
    catch (e) { return {ok: false, code: e.code, message: e.message}; }
    finally { api.close(); }
}"""
"""One operation through the page's own protocol client (static/js/api.js), as a page would
call it: what the server answers a role, whatever the page shows or hides."""


async def goto(page: Page, site: Site, route: str, name: str) -> None:
    """Open ``route`` in the signed-in tab and wait for the page ``name`` to be drawn."""
    await page.goto(site.console_url + route)
    await pw_expect(page.locator(f'[data-page="{name}"]')).to_be_visible()


async def test_admin_signs_in_and_the_fleet_page_counts_the_site(sign_in: SignIn) -> None:
    """An admin token opens the console on the Fleet page, which counts the site's computers
    and how many are online (all three agents of the site)."""
    page = await sign_in("admin")
    await pw_expect(page.locator('[data-page="fleet"]')).to_be_visible()
    await pw_expect(page.get_by_test_id("count-computers")).to_have_text(
        re.compile(rf"\b{len(AGENTS)}\b")
    )
    await pw_expect(page.get_by_test_id("count-online")).to_have_text(
        re.compile(rf"\b{len(AGENTS)}\b")
    )


async def test_a_bad_token_is_refused_with_an_error(
    site: Site, browser: Browser, shot: Shot
) -> None:
    """A token the NS does not know: the sign-in form stays, with the server's reason."""
    ctx = await browser.new_context(ignore_https_errors=True)
    try:
        page = await ctx.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        await page.goto(site.console_url)
        await submit_token(page, "tfa_not-a-token-of-this-site")
        error = page.get_by_test_id("signin-error")
        await pw_expect(error).to_be_visible()
        await pw_expect(error).to_contain_text(re.compile("refused|unknown|revoked", re.I))
        await pw_expect(page.get_by_test_id("signin-token")).to_be_visible()
        assert await page.evaluate("() => sessionStorage.length") == 0
        await shot(page, "signin-refused")
    finally:
        await ctx.close()


async def test_sign_out_and_a_revoked_token_end_the_session(site: Site, sign_in: SignIn) -> None:
    """Sign out forgets the token (sessionStorage empty, the sign-in form back); an admin token
    revoked while its tab is open sends that tab back to sign-in with the server's reason."""
    page = await sign_in("viewer")
    await page.get_by_test_id("sign-out").click()
    await pw_expect(page.get_by_test_id("signin-form")).to_be_visible()
    assert await page.evaluate("() => sessionStorage.length") == 0

    async with site.fleet.admin() as c:
        leaver = await c.call("admins.add", name="console-leaver", role="viewer")
        page = await sign_in("viewer", token=leaver["token"])
        await c.call("admins.revoke", name="console-leaver")
    await pw_expect(page.get_by_test_id("signin-form")).to_be_visible()
    await pw_expect(page.get_by_test_id("signin-error")).to_contain_text("revoked")
    assert await page.evaluate("() => sessionStorage.length") == 0


async def test_a_viewer_is_offered_no_run_nor_accept_and_the_server_refuses(
    site: Site, sign_in: SignIn
) -> None:
    """A viewer sees the Launch and Keys pages without their Start and Accept buttons, and the
    NS refuses ``run.start`` and ``keys.accept`` from that token anyway."""
    page = await sign_in("viewer")
    await goto(page, site, "#/launch", "launch")
    await pw_expect(page.get_by_test_id("launch-denied")).to_be_visible()
    await pw_expect(page.get_by_test_id("launch-start")).to_have_count(0)
    await goto(page, site, "#/keys", "keys")
    await pw_expect(page.locator('[data-testid^="accept-"]')).to_have_count(0)

    token = site.tokens["viewer"]
    for op, args in (("run.start", {"task": HELLO, "all": True}), ("keys.accept", {"all": True})):
        answer: dict[str, Any] = await page.evaluate(CALL_AS, [token, op, args])
        assert answer["ok"] is False, f"a viewer's {op} was accepted"
        assert answer["code"] == "forbidden", answer


async def test_a_run_started_from_the_launcher_turns_the_grid_green(
    site: Site, sign_in: SignIn, shot: Shot
) -> None:
    """An operator starts the saved task on every computer from the Launch page; the Run page's
    grid shows each computer succeeded, the counts agree, one click shows its output, and the
    computer's page lists the run."""
    page = await sign_in("operator")
    await goto(page, site, "#/launch", "launch")
    await page.get_by_test_id("launch-what").select_option(HELLO)
    await page.get_by_test_id("launch-all").check()
    await page.get_by_test_id("launch-check").click()
    await pw_expect(page.get_by_test_id("launch-plan")).to_have_attribute(
        "data-targets", str(len(AGENTS))
    )
    await shot(page, "launch-plan")
    await page.get_by_test_id("launch-start").click()
    await page.wait_for_url(re.compile(r"#/run/\d+$"), timeout=UI_TIMEOUT_MS)
    await pw_expect(page.locator('[data-page="run"]')).to_be_visible()

    for name in AGENTS:
        await pw_expect(page.get_by_test_id(f"cell-{name}")).to_have_attribute(
            "data-state", "succeeded"
        )
    await pw_expect(page.get_by_test_id("count-succeeded")).to_have_attribute(
        "data-count", str(len(AGENTS))
    )
    await shot(page, "run")

    run_id = int(page.url.rsplit("/", 1)[1])
    async with site.fleet.admin() as c:
        stored = await c.call("run.show", run_id=run_id)
    assert stored["status"] == "succeeded" and len(stored["instances"]) == len(AGENTS)

    await page.get_by_test_id("cell-list").locator("summary").click()
    await page.get_by_test_id(f"cell-{AGENTS[0]}").get_by_role("button").click()
    await pw_expect(page.get_by_test_id("run-detail")).to_have_attribute("data-computer", AGENTS[0])
    await pw_expect(page.get_by_test_id("output")).to_contain_text(f"hello from {AGENTS[0]}")
    await shot(page, "run-output")

    # "What ran on this node": the computer's page lists the run with its state there.
    await goto(page, site, f"#/computer/{AGENTS[0]}", "computer")
    await pw_expect(page.get_by_test_id(f"computer-run-{run_id}")).to_have_attribute(
        "data-status", "succeeded"
    )


async def test_a_pending_key_is_accepted_on_the_keys_page(
    site: Site, sign_in: SignIn, shot: Shot
) -> None:
    """An agent started without an enrolment token waits pending; an admin accepts it on the
    Keys page, and the agent comes online."""
    newcomer = "new-1"
    await site.fleet.agent(newcomer, enrol=False)
    async with site.fleet.admin() as c:

        async def pending() -> bool:
            return any(
                k["name"] == newcomer and k["state"] == "pending" for k in await c.call("keys.list")
            )

        await until(pending, f"{newcomer}'s key pending")

        page = await sign_in("admin")
        await goto(page, site, "#/keys", "keys")
        row = page.get_by_test_id(f"key-row-{newcomer}")
        await pw_expect(row).to_have_attribute("data-state", "pending")
        await shot(page, "keys-pending")
        await page.get_by_test_id(f"accept-{newcomer}").click()
        await pw_expect(row).to_have_attribute("data-state", "accepted")

        async def online() -> bool:
            rows = await c.call("computers.list")
            return any(r["name"] == newcomer and r["online"] for r in rows)

        await until(online, f"{newcomer} online once accepted")


async def test_every_page_is_drawn(site: Site, sign_in: SignIn, shot: Shot) -> None:
    """Each page of the console opens for an admin (its module loads and draws its root, with
    no error box) and is photographed for docs/console.md."""
    page = await sign_in("admin")
    for name, route in PAGES.items():
        await goto(page, site, route, name)
        await pw_expect(page.get_by_test_id("not-built")).to_have_count(0)
        await pw_expect(page.get_by_test_id("error")).to_have_count(0)
        await shot(page, f"page-{name}")
