// The Tasks & jobs page (#/tasks): every saved task and job in one table (tasks.list and
// jobs.list: they share one namespace); a click opens its document (#/task/NAME, #/job/NAME).
//
// testids: tasks-table (rows "table-row" with data-key = name), tasks-new-task, tasks-new-job,
// error.

import { el, table, time, errorBox, display } from "../ui.js";

export async function render(root, ctx) {
  const { api, navigate } = ctx;
  root.setAttribute("data-page", "tasks");
  const admin = api.may("task.add");
  root.appendChild(
    el(
      "header",
      { class: "page-head" },
      el("h1", {}, "Tasks and jobs"),
      admin ? el("button", { type: "button", "data-testid": "tasks-new-task", "on:click": () => navigate("#/task/new?new=1") }, "New task") : null,
      admin ? el("button", { type: "button", "data-testid": "tasks-new-job", "on:click": () => navigate("#/job/new?new=1") }, "New job") : null
    )
  );
  let tasks, jobs;
  try {
    [tasks, jobs] = await Promise.all([api.call("tasks.list"), api.call("jobs.list")]);
  } catch (err) {
    root.appendChild(errorBox(err));
    return;
  }
  const rows = [
    ...tasks.map((t) => ({ ...t, what: "task", steps: "" })),
    ...jobs.map((j) => ({ ...j, what: "job", kind: j.type === "server-job" ? "server-job" : "client", steps: (j.steps || []).length })),
  ].sort((a, b) => display(a.name).localeCompare(display(b.name)));
  const body = el("div");
  body.appendChild(
    table(
      rows,
      [
        { key: "name", title: "name" },
        { key: "what", title: "task or job" },
        { key: "type", title: "type" },
        { key: "kind", title: "kind" },
        { key: "version", title: "version" },
        { key: "timeout_s", title: "time limit (s)" },
        { key: "steps", title: "steps" },
        { key: "updated_at", title: "saved", render: (r) => time(r.updated_at) },
        { key: "description", title: "description" },
      ],
      {
        key: "name",
        testid: "tasks-table",
        empty: "No tasks or jobs saved yet.",
        onRowClick: (r) => navigate(`#/${r.what}/${encodeURIComponent(r.name)}`),
      }
    )
  );
  root.appendChild(body);
}
