// One computer (#/computer/NAME): what it is (computer.show: state, task server, OS, agent,
// addresses, groups, filters, latest inventory) and what ran on it (computer.runs: every run
// with an instance on it, newest first, with its state there). One click on a run opens the
// run page narrowed to this computer: #/run/ID?computer=NAME.
//
// testids: computer-name, computer-state, computer-facts, computer-groups, group-link-NAME,
// computer-filters, filter-link-NAME, computer-inventory, inventory-empty, computer-runs,
// computer-run-RUNID (a row; data-status = its state there), run-link-RUNID, error.

import { ago, badge, display, el, errorBox, time } from "../ui.js";
import { pagedTable } from "./computers.js";

function runHref(runId, name) {
  return `#/run/${display(runId)}?computer=${encodeURIComponent(name)}`;
}

function fact(label, value) {
  return el("tr", {}, el("th", {}, label), el("td", {}, value === null || value === undefined || value === "" ? "—" : value));
}

function links(testid, names, prefix, param) {
  if (!names.length) return el("span", { "data-testid": testid }, "none");
  return el(
    "span",
    { "data-testid": testid },
    names.map((n, i) => [i ? ", " : "", el("a", { href: `#/computers?${param}=${encodeURIComponent(n)}`, "data-testid": `${prefix}-link-${n}` }, n)])
  );
}

function inventory(inv) {
  if (!inv) return el("p", { class: "notice", "data-testid": "inventory-empty" }, "No inventory reported yet.");
  const rows = Object.keys(inv)
    .sort()
    .map((k) =>
      el(
        "tr",
        {},
        el("th", {}, k),
        el("td", {}, k === "at" ? `${time(inv.at)} (${ago(inv.at)})` : typeof inv[k] === "object" && inv[k] !== null ? el("pre", {}, JSON.stringify(inv[k], null, 2)) : display(inv[k]))
      )
    );
  return el("div", { class: "table-wrap", "data-testid": "computer-inventory" }, el("table", { class: "data" }, el("tbody", {}, rows)));
}

export async function render(root, ctx, params) {
  const { api } = ctx;
  const name = params.name;
  root.append(el("p", {}, el("a", { href: "#/computers" }, "← Computers")));
  let info;
  let runs;
  try {
    [info, runs] = await Promise.all([
      api.call("computer.show", { computer: name }),
      api.call("computer.runs", { computer: name, limit: 1000 }),
    ]);
  } catch (err) {
    root.append(el("h1", { "data-testid": "computer-name" }, name), errorBox(err));
    return;
  }
  const state = info.has_agent ? (info.online ? "online" : "offline") : "device";
  root.append(
    el("h1", {}, el("span", { "data-testid": "computer-name" }, info.name), " ", el("span", { "data-testid": "computer-state" }, badge(state))),
    el(
      "div",
      { class: "table-wrap", "data-testid": "computer-facts" },
      el(
        "table",
        { class: "data" },
        el(
          "tbody",
          {},
          fact("Agent", info.has_agent ? info.agent_version || "yes" : "none (a device)"),
          fact("Task server", info.taskserver),
          fact("OS", info.os),
          fact("Addresses", (info.addresses || []).join(", ")),
          fact("MAC", info.mac),
          fact("Last seen", info.last_seen ? `${time(info.last_seen)} (${ago(info.last_seen)})` : null),
          fact("Known since", time(info.created_at)),
          fact("Groups", links("computer-groups", info.groups || [], "group", "group")),
          fact("Filters", links("computer-filters", info.filters || [], "filter", "filter"))
        )
      )
    ),
    el("h2", {}, `What ran here (${runs.length}${runs.length === 1000 ? ", the newest" : ""})`)
  );
  const table = pagedTable(
    [
      { key: "run_id", title: "Run", render: (r) => el("a", { href: runHref(r.run_id, name), "data-testid": `run-link-${display(r.run_id)}` }, `#${display(r.run_id)}`) },
      { key: "task_name", title: "Task or job", render: (r) => r.task_name + (r.step ? ` / ${r.step}` : "") },
      { key: "created_at", title: "Started", render: (r) => el("span", { title: time(r.created_at) }, ago(r.created_at)) },
      { key: "status", title: "Here", render: (r) => badge(r.status) },
      { key: "return_code", title: "Exit code" },
      { key: "reason", title: "Reason" },
      { key: "ended_at", title: "Ended", render: (r) => time(r.ended_at) },
      { key: "run_status", title: "Run state", render: (r) => badge(r.run_status) },
    ],
    {
      testid: "computer-runs",
      filter: true,
      rowTestid: (r) => `computer-run-${display(r.run_id)}`,
      rowAttrs: (r) => ({ "data-status": r.status }),
      onRowClick: (r) => ctx.navigate(runHref(r.run_id, name)),
      empty: "Nothing has run on this computer.",
    }
  );
  table.update(runs);
  root.append(table, el("h2", {}, "Inventory"), inventory(info.inventory));
}
