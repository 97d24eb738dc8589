// Policies: the client tasks agents run by themselves on a schedule, with their targets, and
// Enable / Disable (admin: the buttons exist only for a role that may use them). A change
// reaches the policy's connected agents at once; the outcome line says how many.
//
// testids: policies-table, policy-row-NAME (data-enabled = yes | no), policy-enable-NAME,
// policy-disable-NAME, policies-done, error.

import { badge, button, clear, display, el, errorBox } from "../ui.js";
import { pagedTable } from "./computers.js";

function scheduleText(s) {
  if (!s) return "";
  if (s.every_s !== undefined) return `every ${display(s.every_s)} s`;
  if (s.daily_at !== undefined) return `daily at ${s.daily_at} UTC`;
  return display(s);
}

function targetsText(t) {
  if (!t) return "";
  const parts = [];
  if (t.all) parts.push("all computers");
  for (const key of ["computers", "groups", "filters"]) if (t[key] && t[key].length) parts.push(`${key}: ${t[key].join(", ")}`);
  return parts.join("; ") || display(t);
}

export async function render(root, ctx) {
  const { api } = ctx;
  const errors = el("div");
  const done = el("div", { class: "notice", "data-testid": "policies-done", hidden: true });

  async function act(fn) {
    clear(errors);
    try {
      const out = await fn();
      done.textContent = `${out.policy} ${out.enabled ? "enabled" : "disabled"}` + (out.changed ? `: ${display(out.tickled)} agent(s) told now, ${display(out.offline)} offline (told when they connect)` : " (it already was)");
      done.hidden = false;
    } catch (err) {
      errors.appendChild(errorBox(err));
    }
    await load();
  }

  const table = pagedTable(
    [
      { key: "name", title: "Name" },
      { key: "task", title: "Task" },
      { key: "schedule", title: "When", render: (p) => scheduleText(p.schedule), sort: (p) => scheduleText(p.schedule) },
      { key: "targets", title: "Targets", render: (p) => targetsText(p.targets), sort: (p) => targetsText(p.targets) },
      { key: "enabled", title: "State", render: (p) => badge(p.enabled ? "enabled" : "disabled") },
      { key: "description", title: "Description" },
      {
        key: "actions",
        title: "",
        sort: () => 0,
        render: (p) =>
          p.enabled
            ? button("Disable", () => act(() => api.call("policy.disable", { name: p.name })), { op: "policy.disable", testid: `policy-disable-${p.name}`, api })
            : button("Enable", () => act(() => api.call("policy.enable", { name: p.name })), { op: "policy.enable", class: "primary", testid: `policy-enable-${p.name}`, api }),
      },
    ],
    {
      testid: "policies-table",
      filter: true,
      sortKey: "name",
      rowTestid: (p) => `policy-row-${p.name}`,
      rowAttrs: (p) => ({ "data-enabled": p.enabled ? "yes" : "no" }),
      empty: "No policies (taskfleet policy add).",
    }
  );

  async function load() {
    try {
      table.update(await api.call("policies.list"));
    } catch (err) {
      errors.appendChild(errorBox(err));
    }
  }

  root.append(el("h1", {}, "Policies"), errors, done, table);
  await load();
}
