// The Runs page (#/runs): the newest runs (runs.list), one row each; a click opens the run.
//
// testids: runs-table (the table; rows are "table-row" with data-key = run id), runs-limit,
// runs-refresh, error.

import { el, clear, table, badge, time, errorBox, display } from "../ui.js";

const LIMITS = [50, 200, 1000];

export async function render(root, ctx, params) {
  const { api, navigate } = ctx;
  root.setAttribute("data-page", "runs");
  const query = params.query || {};
  let limit = LIMITS.includes(Number(query.limit)) ? Number(query.limit) : 50;
  const body = el("div", { class: "runs-body" });
  const limitBox = el(
    "select",
    {
      "data-testid": "runs-limit",
      "aria-label": "How many runs",
      "on:change": () => {
        limit = Number(limitBox.value);
        load();
      },
    },
    LIMITS.map((n) => el("option", { value: String(n), selected: n === limit }, `newest ${n}`))
  );
  const refresh = el("button", { type: "button", "data-testid": "runs-refresh", "on:click": () => load() }, "Refresh");
  const launch = api.may("run.start")
    ? el("button", { type: "button", "data-testid": "runs-launch", "on:click": () => navigate("#/launch") }, "Launch a run")
    : null;
  root.append(el("header", { class: "page-head" }, el("h1", {}, "Runs"), limitBox, refresh, launch), body);

  const columns = [
    { key: "id", title: "run" },
    { key: "task_name", title: "task or job" },
    { key: "kind", title: "kind" },
    { key: "status", title: "status", render: (r) => badge(r.status) },
    { key: "created_at", title: "started", render: (r) => time(r.created_at) },
    { key: "ended_at", title: "ended", render: (r) => time(r.ended_at) },
    { key: "total", title: "computers" },
    { key: "succeeded", title: "succeeded" },
    { key: "failed", title: "failed" },
    { key: "pending", title: "unfinished" },
    { key: "schedule", title: "schedule", render: (r) => display(r.schedule) },
  ];
  let grid = null;
  let timer = 0;

  async function load() {
    let rows;
    try {
      rows = await api.call("runs.list", { limit });
    } catch (err) {
      clear(body).appendChild(errorBox(err));
      return;
    }
    if (grid) grid.update(rows);
    else {
      grid = table(rows, columns, {
        key: "id",
        testid: "runs-table",
        empty: "No runs yet.",
        onRowClick: (r) => navigate(`#/run/${display(r.id)}`),
      });
      clear(body).appendChild(grid);
    }
    // While a run is in flight, its counts move: look again every few seconds.
    clearTimeout(timer);
    if (rows.some((r) => r.status === "running")) timer = setTimeout(load, 3000);
  }

  ctx.onCleanup(() => clearTimeout(timer));
  await load();
}
