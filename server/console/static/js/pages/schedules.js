// Schedules: what each runs, when, its next and last firing (with the last run and outcome),
// and Enable / Disable (operator: the buttons exist only for a role that may use them).
//
// testids: schedules-table, schedule-row-NAME (data-enabled = yes | no),
// schedule-enable-NAME, schedule-disable-NAME, error.

import { ago, attempt, badge, button, display, el, errorBox, time } from "../ui.js";
import { pagedTable } from "./computers.js";

export async function render(root, ctx) {
  const { api } = ctx;
  const errors = el("div");

  const act = (fn) => attempt(errors, fn, load);

  const table = pagedTable(
    [
      { key: "name", title: "Name" },
      { key: "run", title: "Runs" },
      { key: "when", title: "When" },
      { key: "enabled", title: "State", render: (s) => badge(s.enabled ? "enabled" : "disabled") },
      { key: "next_at", title: "Next", render: (s) => el("span", { title: ago(s.next_at) }, time(s.next_at) || "—") },
      { key: "last_at", title: "Last", render: (s) => time(s.last_at) },
      {
        key: "last_run_id",
        title: "Last run",
        render: (s) => (s.last_run_id === null || s.last_run_id === undefined ? "" : el("a", { href: `#/run/${display(s.last_run_id)}` }, `#${display(s.last_run_id)}`)),
      },
      { key: "last_outcome", title: "Outcome" },
      {
        key: "actions",
        title: "",
        sort: () => 0,
        render: (s) =>
          s.enabled
            ? button("Disable", () => act(() => api.call("schedule.disable", { name: s.name })), { op: "schedule.disable", testid: `schedule-disable-${s.name}`, api })
            : button("Enable", () => act(() => api.call("schedule.enable", { name: s.name })), { op: "schedule.enable", class: "primary", testid: `schedule-enable-${s.name}`, api }),
      },
    ],
    {
      testid: "schedules-table",
      filter: true,
      sortKey: "name",
      rowTestid: (s) => `schedule-row-${s.name}`,
      rowAttrs: (s) => ({ "data-enabled": s.enabled ? "yes" : "no" }),
      empty: "No schedules (taskfleet schedule add).",
    }
  );

  async function load() {
    try {
      table.update(await api.call("schedules.list"));
    } catch (err) {
      errors.appendChild(errorBox(err));
    }
  }

  root.append(el("h1", {}, "Schedules"), errors, table);
  await load();
}
