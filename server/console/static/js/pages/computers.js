// Computers: every computer, narrowed by name, group, filter, task server, online state and
// agent; the narrowing is kept in the hash's query (#/computers?q=web&group=site&online=yes)
// so a link carries it. Group and filter narrow on the server (computers.list {group, filter}:
// a group reaches its nested groups' computers, as a run on it does); the rest in the page.
//
// 10,000 rows stay fast because the table is PAGINATED: only one page (100 rows) is in the
// DOM at a time; sorting and narrowing work on the array, never on DOM rows.
//
// This module also exports `pagedTable`, the paginated table the other fleet pages use
// (ui.table draws every row, and its rows carry only the generic testid "table-row").
//
// testids: computers-search, computers-group, computers-filter, computers-ts,
// computers-online, computers-agent, computers-table, computers-count,
// computer-row-NAME (one per row shown; data-online = yes|no), computer-link-NAME,
// pager-prev, pager-next, pager-info, error.

import { badge, clear, display, el, errorBox, time, ago } from "../ui.js";

const PAGE_SIZE = 100;

function compare(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined || a === "") return 1;
  if (b === null || b === undefined || b === "") return -1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  if (typeof a === "boolean" || typeof b === "boolean") return Number(a) - Number(b);
  return display(a).localeCompare(display(b), undefined, { numeric: true });
}

/**
 * A table that puts one page of rows in the DOM. columns: [{key, title, render?(row), sort?(row)}].
 * opts: {rowTestid(row) -> testid, rowAttrs(row) -> extra attributes, onRowClick(row),
 * pageSize, empty, testid, filter (a text box matching any column's text; default false),
 * sortKey, sortDir}. Returns the wrapper; `wrapper.update(rows)` replaces the rows and keeps
 * the page, the sort and the filter text.
 */
export function pagedTable(columns, opts = {}) {
  const size = opts.pageSize || PAGE_SIZE;
  let data = [];
  let page = 0;
  let sortKey = opts.sortKey || null;
  let sortDir = opts.sortDir || 1;
  const filterBox = opts.filter
    ? el("input", { type: "search", placeholder: "Filter", "aria-label": "Filter rows", "data-testid": `${opts.testid || "table"}-filter` })
    : null;
  const tbody = el("tbody");
  const heads = columns.map((col) =>
    el(
      "th",
      {
        class: "sortable",
        "data-key": col.key,
        "data-testid": `th-${col.key}`,
        "on:click": () => {
          sortDir = sortKey === col.key ? -sortDir : 1;
          sortKey = col.key;
          draw();
        },
      },
      col.title ?? col.key
    )
  );
  const info = el("span", { class: "table-count", "data-testid": "pager-info" });
  const prev = el("button", { type: "button", "data-testid": "pager-prev", "on:click": () => { page -= 1; draw(); } }, "‹ Previous");
  const next = el("button", { type: "button", "data-testid": "pager-next", "on:click": () => { page += 1; draw(); } }, "Next ›");
  const wrapper = el(
    "div",
    { class: "table-wrap", "data-testid": opts.testid || "table" },
    el("div", { class: "table-tools" }, filterBox, prev, next, info),
    el("table", { class: "data" }, el("thead", {}, el("tr", {}, heads)), tbody)
  );

  function shownRows() {
    const needle = filterBox ? filterBox.value.trim().toLowerCase() : "";
    let rows = needle
      ? data.filter((r) => columns.some((c) => display(c.sort ? c.sort(r) : r[c.key]).toLowerCase().includes(needle)))
      : data.slice();
    if (sortKey) {
      const col = columns.find((c) => c.key === sortKey);
      const value = col && col.sort ? col.sort : (r) => r[sortKey];
      rows.sort((a, b) => sortDir * compare(value(a), value(b)));
    }
    return rows;
  }

  function draw() {
    const rows = shownRows();
    const pages = Math.max(1, Math.ceil(rows.length / size));
    page = Math.min(Math.max(page, 0), pages - 1);
    for (const th of heads) {
      th.classList.toggle("sorted-asc", th.dataset.key === sortKey && sortDir === 1);
      th.classList.toggle("sorted-desc", th.dataset.key === sortKey && sortDir === -1);
    }
    clear(tbody);
    if (rows.length === 0) {
      tbody.appendChild(el("tr", { class: "empty", "data-testid": "empty" }, el("td", { colspan: columns.length }, opts.empty || "Nothing here.")));
    }
    for (const row of rows.slice(page * size, (page + 1) * size)) {
      const tr = el(
        "tr",
        {
          "data-testid": opts.rowTestid ? opts.rowTestid(row) : "table-row",
          class: opts.onRowClick ? "clickable" : null,
          ...(opts.rowAttrs ? opts.rowAttrs(row) : {}),
        },
        columns.map((c) => el("td", { "data-col": c.key }, c.render ? c.render(row) : display(row[c.key])))
      );
      if (opts.onRowClick) {
        tr.addEventListener("click", (ev) => {
          if (ev.target.closest("a, button, input, select")) return; // their own action
          opts.onRowClick(row);
        });
      }
      tbody.appendChild(tr);
    }
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
    const first = rows.length ? page * size + 1 : 0;
    const last = Math.min(rows.length, (page + 1) * size);
    info.textContent = `${first}–${last} of ${rows.length}` + (rows.length !== data.length ? ` (${data.length} in all)` : "");
  }

  if (filterBox) filterBox.addEventListener("input", () => { page = 0; draw(); });
  wrapper.update = (rows) => {
    data = rows || [];
    draw();
  };
  wrapper.firstPage = () => {
    page = 0;
    draw();
  };
  draw();
  return wrapper;
}

/** A link to a computer's page. */
export function computerLink(name) {
  return el("a", { href: `#/computer/${encodeURIComponent(name)}`, "data-testid": `computer-link-${name}` }, name);
}

/** Where a filter value is read from: the hash's query (so a link carries it). */
const KEYS = ["q", "group", "filter", "ts", "online", "agent"];

function options(select, values, allText) {
  const keep = select.value;
  clear(select);
  select.appendChild(el("option", { value: "" }, allText));
  for (const v of values) select.appendChild(el("option", { value: v }, v));
  select.value = values.includes(keep) ? keep : "";
}

export async function render(root, ctx, params) {
  const { api } = ctx;
  const query = params.query || {};
  const search = el("input", { type: "search", placeholder: "Name contains…", "aria-label": "Search by name", "data-testid": "computers-search", value: query.q || "" });
  const group = el("select", { "aria-label": "Group", "data-testid": "computers-group" });
  const filter = el("select", { "aria-label": "Filter", "data-testid": "computers-filter" });
  const ts = el("select", { "aria-label": "Task server", "data-testid": "computers-ts" });
  const online = el(
    "select",
    { "aria-label": "Online state", "data-testid": "computers-online" },
    el("option", { value: "" }, "online or not"),
    el("option", { value: "yes" }, "online"),
    el("option", { value: "no" }, "offline")
  );
  const agent = el(
    "select",
    { "aria-label": "Agent", "data-testid": "computers-agent" },
    el("option", { value: "" }, "agents and devices"),
    el("option", { value: "yes" }, "with an agent"),
    el("option", { value: "no" }, "devices (no agent)")
  );
  online.value = query.online || "";
  agent.value = query.agent || "";
  const count = el("span", { class: "table-count", "data-testid": "computers-count" });
  const errors = el("div");
  const grid = pagedTable(
    [
      { key: "name", title: "Name", render: (r) => computerLink(r.name) },
      { key: "online", title: "State", render: (r) => badge(r.has_agent ? (r.online ? "online" : "offline") : "device"), sort: (r) => (r.has_agent ? (r.online ? 2 : 1) : 0) },
      { key: "taskserver", title: "Task server", render: (r) => r.taskserver ?? "—" },
      { key: "os", title: "OS" },
      { key: "agent_version", title: "Agent" },
      { key: "addresses", title: "Addresses", render: (r) => (r.addresses || []).join(", "), sort: (r) => (r.addresses || []).join(",") },
      { key: "last_seen", title: "Last seen", render: (r) => el("span", { title: time(r.last_seen) }, ago(r.last_seen)) },
    ],
    {
      testid: "computers-table",
      sortKey: "name",
      rowTestid: (r) => `computer-row-${r.name}`,
      rowAttrs: (r) => ({ "data-online": r.online ? "yes" : "no" }),
      onRowClick: (r) => ctx.navigate(`#/computer/${encodeURIComponent(r.name)}`),
      empty: "No computer matches.",
    }
  );
  root.append(
    el("h1", {}, "Computers"),
    el("div", { class: "toolbar" }, search, group, filter, ts, online, agent, count),
    errors,
    grid
  );

  let all = [];
  let loaded = ""; // the group/filter the rows were fetched for

  function current() {
    return { q: search.value.trim(), group: group.value, filter: filter.value, ts: ts.value, online: online.value, agent: agent.value };
  }

  function remember(values) {
    const qs = new URLSearchParams();
    for (const k of KEYS) if (values[k]) qs.set(k, values[k]);
    const hash = "#/computers" + (qs.toString() ? "?" + qs : "");
    // replaceState: the hash changes (a link or a reload keeps it) without a new route render.
    if (window.location.hash !== hash) history.replaceState(null, "", hash);
  }

  function narrow() {
    const v = current();
    remember(v);
    const needle = v.q.toLowerCase();
    const rows = all.filter(
      (r) =>
        (!needle || r.name.toLowerCase().includes(needle)) &&
        (!v.ts || (r.taskserver ?? "(none)") === v.ts) &&
        (!v.online || (v.online === "yes") === Boolean(r.online)) &&
        (!v.agent || (v.agent === "yes") === Boolean(r.has_agent))
    );
    count.textContent = `${rows.length} of ${all.length} computers`;
    grid.update(rows);
  }

  async function load() {
    const v = current();
    const key = `${v.group}\u0000${v.filter}`;
    clear(errors);
    try {
      const args = {};
      if (v.group) args.group = v.group;
      if (v.filter) args.filter = v.filter;
      all = await api.call("computers.list", args);
      loaded = key;
    } catch (err) {
      all = [];
      errors.appendChild(errorBox(err));
    }
    const servers = [...new Set(all.map((r) => r.taskserver ?? "(none)"))].sort();
    options(ts, servers, "every task server");
    if (query.ts && !ts.value && servers.includes(query.ts)) ts.value = query.ts;
    grid.firstPage();
    narrow();
  }

  // The group and filter lists (a viewer may read both).
  const [groups, filters] = await Promise.all([
    api.call("groups.list").catch(() => []),
    api.call("filters.list").catch(() => []),
  ]);
  options(group, groups.map((g) => g.name), "every group");
  options(filter, filters.map((f) => f.name), "every filter");
  if (query.group) {
    if (![...group.options].some((o) => o.value === query.group)) group.appendChild(el("option", { value: query.group }, query.group));
    group.value = query.group;
  }
  if (query.filter) {
    if (![...filter.options].some((o) => o.value === query.filter)) filter.appendChild(el("option", { value: query.filter }, query.filter));
    filter.value = query.filter;
  }
  search.addEventListener("input", () => { grid.firstPage(); narrow(); });
  for (const s of [ts, online, agent]) s.addEventListener("change", () => { grid.firstPage(); narrow(); });
  for (const s of [group, filter]) s.addEventListener("change", () => { if (`${group.value}\u0000${filter.value}` !== loaded) load(); });
  await load();
}
