// Fleet: the site at a glance, from one request (fleet.summary): computers, online, with and
// without an agent, per task server; runs in flight; recent failures (run, computer, reason);
// recent messages. Live: a new message (messages.watch events) refreshes at once, and the
// page refreshes every REFRESH_MS while it is open (runs and presence have no fleet-wide
// event); both stop when the page is left. Unchanged data is not redrawn.
//
// testids: fleet-counts, count-computers, count-online, count-agents, count-no-agent,
// count-runs (the numbers, as text), card-computers, card-online, card-agents, card-no-agent,
// card-runs, fleet-by-ts, ts-row-NAME, fleet-runs, flight-row-ID, fleet-failures,
// failure-row-INSTANCEID, fleet-messages, message-row-ID, fleet-updated, error.

import { ago, badge, clear, display, el, errorBox, time } from "../ui.js";
import { computerLink } from "./computers.js";

const REFRESH_MS = 5000;

function card(testid, label, value, href) {
  return el(
    "a",
    { class: "card", href, "data-testid": `card-${testid}` },
    el("div", { class: "count", "data-testid": `count-${testid}` }, String(value)),
    el("div", { class: "label" }, label)
  );
}

function runLink(id, computer) {
  const q = computer ? `?computer=${encodeURIComponent(computer)}` : "";
  return el("a", { href: `#/run/${display(id)}${q}` }, `#${display(id)}`);
}

function simpleTable(testid, heads, rows, empty) {
  return el(
    "div",
    { class: "table-wrap", "data-testid": testid },
    el(
      "table",
      { class: "data" },
      el("thead", {}, el("tr", {}, heads.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.length ? rows : el("tr", { class: "empty", "data-testid": "empty" }, el("td", { colspan: heads.length }, empty)))
    )
  );
}

function draw(body, s) {
  clear(body);
  const stillRunning = s.runs_in_flight.length;
  body.append(
    el(
      "div",
      { class: "cards", "data-testid": "fleet-counts" },
      card("computers", "computers", s.computers, "#/computers"),
      card("online", "online", s.online, "#/computers?online=yes"),
      card("agents", "with an agent", s.agents, "#/computers?agent=yes"),
      card("no-agent", "devices without agent", s.no_agent, "#/computers?agent=no"),
      card("runs", "runs in flight", stillRunning, "#/runs")
    ),
    el("h2", {}, "By task server"),
    simpleTable(
      "fleet-by-ts",
      ["Task server", "Computers", "Online", "Connected"],
      s.by_taskserver.map((t) => {
        const name = t.taskserver ?? "(no task server)";
        const link = t.taskserver ? `#/computers?ts=${encodeURIComponent(t.taskserver)}` : "#/computers?ts=(none)";
        return el(
          "tr",
          { "data-testid": `ts-row-${name}` },
          el("td", {}, el("a", { href: link }, name)),
          el("td", {}, display(t.computers)),
          el("td", {}, display(t.online)),
          el("td", {}, t.taskserver ? badge(t.connected ? "online" : "offline") : "—")
        );
      }),
      "No computers yet."
    ),
    el("h2", {}, "Runs in flight"),
    simpleTable(
      "fleet-runs",
      ["Run", "Task or job", "Started", "Targets", "Succeeded", "Failed", "Pending"],
      s.runs_in_flight.map((r) =>
        el(
          "tr",
          { "data-testid": `flight-row-${display(r.id)}` },
          el("td", {}, runLink(r.id)),
          el("td", {}, r.task_name),
          el("td", { title: time(r.created_at) }, ago(r.created_at)),
          el("td", {}, display(r.total)),
          el("td", {}, display(r.succeeded)),
          el("td", {}, display(r.failed)),
          el("td", {}, display(r.pending))
        )
      ),
      "No run in flight."
    ),
    el("h2", {}, "Recent failures"),
    simpleTable(
      "fleet-failures",
      ["Ended", "Run", "Task or job", "Computer", "State", "Reason"],
      s.failures.map((f) =>
        el(
          "tr",
          { "data-testid": `failure-row-${display(f.instance_id)}` },
          el("td", { title: time(f.ended_at) }, ago(f.ended_at)),
          el("td", {}, runLink(f.run_id, f.computer)),
          el("td", {}, f.task_name + (f.step ? ` / ${f.step}` : "")),
          el("td", {}, computerLink(f.computer)),
          el("td", {}, badge(f.status)),
          el("td", {}, f.reason || (f.return_code !== null && f.return_code !== undefined ? `exit code ${display(f.return_code)}` : ""))
        )
      ),
      "No failures among the recent runs."
    ),
    el("h2", {}, "Recent messages ", el("a", { href: "#/messages" }, "(all)")),
    simpleTable(
      "fleet-messages",
      ["When", "Severity", "Message", "Source"],
      s.messages.map((m) =>
        el(
          "tr",
          { "data-testid": `message-row-${display(m.id)}` },
          el("td", { title: time(m.at) }, ago(m.at)),
          el("td", {}, badge(m.severity)),
          el("td", {}, m.text),
          el("td", {}, m.source)
        )
      ),
      "No messages."
    )
  );
}

export async function render(root, ctx) {
  const { api } = ctx;
  const errors = el("div");
  const updated = el("span", { class: "table-count", "data-testid": "fleet-updated" });
  const body = el("div");
  root.append(el("div", { class: "toolbar" }, el("h1", {}, "Fleet"), updated), errors, body);

  let last = "";
  let busy = false;
  let again = false;
  let left = false;

  async function refresh() {
    if (busy) {
      again = true; // one more pass after this one, not a queue of them
      return;
    }
    busy = true;
    try {
      const summary = await api.call("fleet.summary", { failures: 10, messages: 10 });
      if (left) return;
      clear(errors);
      const text = display(summary);
      if (text !== last) {
        last = text;
        draw(body, summary);
      }
      updated.textContent = `updated ${time(Date.now() / 1000)}`;
    } catch (err) {
      if (left) return;
      clear(errors);
      errors.appendChild(errorBox(err));
    } finally {
      busy = false;
      if (again && !left) {
        again = false;
        refresh();
      }
    }
  }

  const timer = setInterval(refresh, REFRESH_MS);
  const off = api.onEvent((ev) => {
    if (ev.kind === "message" || ev.kind === "resync") refresh();
  });
  ctx.onCleanup(() => {
    left = true;
    clearInterval(timer);
    off();
  });
  if (api.may("messages.watch")) api.call("messages.watch").catch(() => {});
  await refresh();
}
