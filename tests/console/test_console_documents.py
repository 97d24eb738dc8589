"""The console's task, job and run pages in a real browser (headless Chromium) against a real
site (NS, TS, agents; see conftest.py): a document edited with the server's validation errors
shown at their lines, its versions compared, a job drawn with its branches, the launcher's
warning for a target with no agent, the Run page's counts, filter and one computer's reason,
and what a viewer is not offered.

This module has a site of its own (the fixture is per module), so what it adds (a device, new
task versions) never meets the other console tests.
"""

from __future__ import annotations

import re
import tomllib

import pytest
from playwright.async_api import Page
from playwright.async_api import expect as pw_expect

from admin.tomlout import dumps
from tests.console.conftest import AGENTS, HELLO, UI_TIMEOUT_MS, Shot, SignIn, Site
from tests.helpers import task_doc

pytestmark = pytest.mark.asyncio(loop_scope="module")

JOB = """name = "check-then-fix"
type = "client-job"

[[steps]]
id = "check"
task = "doc-task"

[[steps]]
if = "check.status == 'failed'"
then = [ { id = "fix", task = "doc-task" } ]
else = [ { id = "report", task = "doc-task" } ]
"""


async def goto(page: Page, site: Site, route: str, name: str) -> None:
    """Open ``route`` in the signed-in tab and wait for the page ``name`` to be drawn."""
    await page.goto(site.console_url + route)
    await pw_expect(page.locator(f'[data-page="{name}"]')).to_be_visible()


async def test_a_bad_edit_is_refused_with_its_problem_at_its_line_then_saved_and_compared(
    site: Site, sign_in: SignIn, shot: Shot
):
    """An admin adds an unknown parameter to a task in the editor: the save is refused, the
    problem is listed by its field path with the line it is on, and that line is marked. Once
    fixed, the save makes version 2, and comparing 1 with 2 shows the changed line only."""
    async with site.fleet.admin() as c:
        await c.call("task.add", text=task_doc("doc-task", "echo first"))
    page = await sign_in("admin")
    await goto(page, site, "#/task/doc-task", "document")
    editor = page.get_by_test_id("doc-editor")
    text = await editor.input_value()
    assert "echo first" in text and 'type = "run-script"' in text
    lines = text.replace('interpreter = "sh"', 'interpreter = "sh"\nbogus = 1').split("\n")
    bogus_line = lines.index("bogus = 1") + 1
    await editor.fill("\n".join(lines))
    await page.get_by_test_id("doc-save").click()

    problem = page.get_by_test_id("doc-problem")
    await pw_expect(problem).to_have_count(1)
    await pw_expect(problem).to_have_attribute("data-path", "params.bogus")
    await pw_expect(problem).to_have_attribute("data-line", str(bogus_line))
    await pw_expect(problem).to_contain_text("unknown parameter for run-script")
    await pw_expect(page.locator('[data-testid="doc-gutter"] [data-bad]')).to_have_text(
        re.compile(rf"!\s*{bogus_line}$")
    )
    await shot(page, "document-invalid")
    async with site.fleet.admin() as c:
        assert len(await c.call("task.history", name="doc-task")) == 1

    await editor.fill(text.replace("echo first", "echo second"))
    await page.get_by_test_id("doc-save").click()
    await pw_expect(page.get_by_test_id("doc-saved")).to_contain_text("version 2")
    await pw_expect(page.get_by_test_id("doc-versions").get_by_test_id("table-row")).to_have_count(
        2
    )
    await page.get_by_test_id("version-a").select_option("1")
    await page.get_by_test_id("version-b").select_option("2")
    await page.get_by_test_id("doc-compare").click()
    await pw_expect(page.locator('[data-testid="diff-line"][data-op="del"]')).to_have_text(
        ["- echo first"]
    )
    await pw_expect(page.locator('[data-testid="diff-line"][data-op="add"]')).to_have_text(
        ["+ echo second"]
    )
    await shot(page, "document-diff")


async def test_a_job_is_drawn_with_its_condition_and_both_branches(
    site: Site, sign_in: SignIn, shot: Shot
):
    async with site.fleet.admin() as c:
        await c.call("task.add", text=task_doc("doc-task", "echo second"))
        await c.call("job.add", text=JOB)
    page = await sign_in("viewer")
    await goto(page, site, "#/job/check-then-fix", "document")
    drawing = page.get_by_test_id("job-drawing")
    await pw_expect(drawing.get_by_test_id("job-step")).to_have_count(3)
    condition = drawing.get_by_test_id("job-condition")
    await pw_expect(condition).to_contain_text("check.status == 'failed'")
    await pw_expect(condition.locator(".branch.then [data-testid=job-step]")).to_have_attribute(
        "data-step", "fix"
    )
    await pw_expect(condition.locator(".branch.else [data-testid=job-step]")).to_have_attribute(
        "data-step", "report"
    )
    # A viewer reads the document but is offered no save and no run.
    await pw_expect(page.get_by_test_id("doc-editor")).to_have_attribute("readonly", "")
    await pw_expect(page.get_by_test_id("doc-save")).to_have_count(0)
    await pw_expect(page.get_by_test_id("doc-launch")).to_have_count(0)
    await shot(page, "job-drawing")


async def test_the_launcher_warns_of_a_device_and_the_run_page_shows_why_it_failed(
    site: Site, sign_in: SignIn, shot: Shot
):
    """An operator picks two agents and a device with no agent: the check warns that one
    target has no agent, naming it; the run's page then counts two succeeded and one failed,
    the state filter leaves the device alone in the grid, and a click on it shows the reason."""
    async with site.fleet.admin() as c:
        await c.call("computers.add", name="printer-1")
    page = await sign_in("operator")
    await goto(page, site, f"#/launch?task={HELLO}", "launch")
    await page.get_by_test_id("launch-computers").select_option([AGENTS[0], AGENTS[1], "printer-1"])
    await page.get_by_test_id("launch-check").click()
    plan = page.get_by_test_id("launch-plan")
    await pw_expect(plan).to_have_attribute("data-targets", "3")
    await pw_expect(plan).to_have_attribute("data-no-agent", "1")
    await pw_expect(
        page.locator('[data-testid="launch-warning"][data-kind="no_agent"]')
    ).to_contain_text("printer-1")
    await shot(page, "launch-warning")
    await page.get_by_test_id("launch-start").click()
    await page.wait_for_url(re.compile(r"#/run/\d+"), timeout=UI_TIMEOUT_MS)

    await pw_expect(page.get_by_test_id("count-succeeded")).to_have_attribute("data-count", "2")
    await pw_expect(page.get_by_test_id("count-failed")).to_have_attribute("data-count", "1")
    await pw_expect(page.get_by_test_id("cell-printer-1")).to_have_attribute("data-state", "failed")
    await pw_expect(page.get_by_test_id("run-status")).to_have_attribute("data-state", "failed")
    await page.get_by_test_id("run-filter-state").select_option("failed")
    await pw_expect(page.get_by_test_id("grid-shown")).to_have_text("1 of 3 shown")

    grid = await page.get_by_test_id("run-grid").bounding_box()
    assert grid is not None
    await page.mouse.click(grid["x"] + 4, grid["y"] + 4)  # the only cell left: the device
    await pw_expect(page.get_by_test_id("run-detail")).to_have_attribute(
        "data-computer", "printer-1"
    )
    await pw_expect(page.get_by_test_id("run-detail")).to_contain_text("no agent")
    await pw_expect(page.get_by_test_id("run-stop")).to_be_hidden()

    # The keyboard reaches the grid too: Home goes to the first cell shown, Enter opens it.
    await page.get_by_test_id("run-filter-state").select_option("succeeded")
    await page.get_by_test_id("run-grid").focus()
    await page.keyboard.press("Home")
    await pw_expect(page.get_by_test_id("run-hover")).to_contain_text(f"{AGENTS[0]}: succeeded")
    await page.keyboard.press("Enter")
    await pw_expect(page.get_by_test_id("run-detail")).to_have_attribute("data-computer", AGENTS[0])
    await pw_expect(page.get_by_test_id("output")).to_contain_text("hello from")
    await shot(page, "run-failed-device")


WRITE_TOML = """async (docs) => {
    const m = await import("/static/js/pages/document.js");
    return docs.map((d) => m.toToml(d));
}"""

DIFF = """async ([a, b]) => {
    const m = await import("/static/js/pages/document.js");
    return m.diffLines(a, b).map((o) => o.op[0] + o.text);
}"""

DOCUMENTS = [
    tomllib.loads(JOB),
    {
        "name": "odd",
        "type": "run-script",
        "timeout_s": 60,
        "description": 'quotes " and \\ and a tab\there',
        "params": {
            "interpreter": "sh",
            "script": "echo 'one'\nprintf '%s\\n' \"two\"\n",
            "env": {"A B": "1", "plain": "x"},
            "success_codes": [0, 3],
        },
    },
    {"name": "ends-with-quote", "type": "run-script", "params": {"script": "echo it's\n'"}},
    {"name": "ctl", "type": "x", "params": {"script": "a\x01b\nc'''d\n", "ratio": 0.5}},
]


async def test_the_console_writes_toml_as_the_cli_does(site: Site, sign_in: SignIn):
    """The Document page's TOML writer (document.js ``toToml``) gives, for documents with
    nested steps, quotes, multi-line scripts and odd keys, the very text ``taskfleet task show``
    prints (admin/tomlout.py), and that text reads back as the document."""
    page = await sign_in("viewer")
    written = await page.evaluate(WRITE_TOML, DOCUMENTS)
    for doc, text in zip(DOCUMENTS, written, strict=True):
        assert text == dumps(doc)
        assert tomllib.loads(text) == doc


async def test_the_line_diff_keeps_common_lines_and_orders_removals_first(
    site: Site, sign_in: SignIn
):
    page = await sign_in("viewer")
    cases = [
        (
            ["a", "b", "c", "d", "e"],
            ["a", "x", "c", "d", "f", "e"],
            ["sa", "db", "ax", "sc", "sd", "af", "se"],
        ),
        ([], ["a"], ["aa"]),
        (["a", "b"], [], ["da", "db"]),
        (["same"], ["same"], ["ssame"]),
    ]
    for a, b, want in cases:
        assert await page.evaluate(DIFF, [a, b]) == want


async def test_a_new_task_is_written_in_the_browser_and_listed(
    site: Site, sign_in: SignIn, shot: Shot
):
    """From the Tasks & jobs page an admin starts a new task from the template, names it, saves
    it, lands on its document (version 1), and the list shows it; the server has it."""
    page = await sign_in("admin")
    await goto(page, site, "#/tasks", "tasks")
    await page.get_by_test_id("tasks-new-task").click()
    await pw_expect(page.locator('[data-page="document"]')).to_be_visible()
    editor = page.get_by_test_id("doc-editor")
    text = await editor.input_value()
    await editor.fill(text.replace('"new-task"', '"made-in-browser"'))
    await page.get_by_test_id("doc-save").click()
    await page.wait_for_url(re.compile(r"#/task/made-in-browser$"), timeout=UI_TIMEOUT_MS)
    await pw_expect(page.get_by_test_id("doc-title")).to_contain_text("version 1")
    async with site.fleet.admin() as c:
        saved = await c.call("task.show", name="made-in-browser")
    assert saved["document"]["type"] == "run-script"
    await goto(page, site, "#/tasks", "tasks")
    row = page.locator('[data-testid="tasks-table"] [data-key="made-in-browser"]')
    await pw_expect(row).to_contain_text("run-script")
    await row.click()
    await pw_expect(page.get_by_test_id("doc-editor")).to_have_value(re.compile("made-in-browser"))
    await shot(page, "tasks")


async def test_text_that_does_not_parse_is_refused_at_its_line(
    site: Site, sign_in: SignIn, shot: Shot
):
    """A syntax error (TOML, then JSON) is refused by the server's parser; the page marks the
    line the parser names, and nothing is saved."""
    async with site.fleet.admin() as c:
        await c.call("task.add", text=task_doc("parse-task", "echo one"))
    page = await sign_in("admin")
    await goto(page, site, "#/task/parse-task", "document")
    editor = page.get_by_test_id("doc-editor")
    await editor.fill('name = "parse-task"\ntype = = "run-script"\n')
    await page.get_by_test_id("doc-save").click()
    problem = page.get_by_test_id("doc-problem")
    await pw_expect(problem).to_have_attribute("data-path", "(document)")
    await pw_expect(problem).to_have_attribute("data-line", "2")

    await page.get_by_test_id("doc-format").select_option("json")
    await pw_expect(editor).to_have_value(re.compile(r'^\{\n  "name": "parse-task"'))
    await editor.fill('{\n  "name": "parse-task",\n  "type": \n}\n')
    await page.get_by_test_id("doc-save").click()
    await pw_expect(problem).to_have_attribute("data-line", "4")
    async with site.fleet.admin() as c:
        assert len(await c.call("task.history", name="parse-task")) == 1
