// Small DOM helpers every page uses. Server data comes from agents and admins: it is only
// ever put in the page as text (textContent, attribute values), never parsed as HTML.
//
// testids set here: table -> "table", its filter box -> "table-filter", each body row ->
// "table-row" (with data-key when opts.key is given), a heading -> "th-<key>",
// errorBox -> "error", badge -> "badge" (data-state=<state>), "empty" when a table has no rows.

let currentApi = null;

/** The shell sets the signed-in Api here, so `button(..., {op})` can ask `api.may(op)`. */
export function setApi(api) {
  currentApi = api;
}

/**
 * Make an element. attrs: `class`, `data-*`, any attribute, `on:event` -> listener,
 * `style` is refused (the CSP forbids inline styles; use a class). Children: strings and
 * numbers become text nodes (escaped), null/undefined/false are skipped, arrays are flattened.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on:")) {
      node.addEventListener(name.slice(3), value);
    } else if (name === "class") {
      node.className = Array.isArray(value) ? value.filter(Boolean).join(" ") : String(value);
    } else if (name === "style") {
      throw new Error("el(): inline style is refused by the CSP; use a class");
    } else if (name === "value" && "value" in node) {
      node.value = String(value);
    } else if (name === "checked" || name === "disabled" || name === "selected") {
      node[name] = Boolean(value);
      if (value) node.setAttribute(name, "");
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.appendChild(child);
    else node.appendChild(document.createTextNode(display(child)));
  }
}

/** A value as text: 64-bit ids arrive as BigInt (msgpack.js) and print as digits. */
export function display(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "object") return JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? v.toString() : v));
  return String(value);
}

/** Remove every child of node. */
export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

function toDate(iso) {
  if (iso === null || iso === undefined || iso === "") return null;
  if (typeof iso === "number" || typeof iso === "bigint") return new Date(Number(iso) * 1000);
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** A timestamp (ISO text, or seconds since the epoch) as local date and time; "" for none. */
export function time(iso) {
  const d = toDate(iso);
  if (!d) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
  );
}

/** How long ago: "5 s ago", "3 min ago", "2 h ago", "4 d ago"; "" for none. */
export function ago(iso) {
  const d = toDate(iso);
  if (!d) return "";
  const s = Math.round((Date.now() - d.getTime()) / 1000);
  if (s < 0) return "in " + span(-s);
  return span(s) + " ago";
}

function span(s) {
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

/** An error (from api.call: .code and .message) as a red box naming the code. */
export function errorBox(err) {
  const code = err && err.code ? err.code : "error";
  const message = err && err.message ? err.message : String(err);
  return el(
    "div",
    { class: "error-box", role: "alert", "data-testid": "error", "data-code": code },
    el("strong", {}, code),
    ": ",
    message
  );
}

const STATES = new Set([
  "succeeded", "failed", "timed_out", "stopped", "running", "pending", "received",
  "dispatched", "online", "offline", "accepted", "rejected",
]);

/** A state as a coloured label (colours in app.css: .badge.<state>). */
export function badge(state) {
  const s = display(state);
  const cls = STATES.has(s) ? s : "other";
  return el("span", { class: ["badge", cls], "data-testid": "badge", "data-state": s }, s);
}

/**
 * A button that runs fn (an async fn's rejection is shown by the caller: wrap it). With
 * {op}, the button is not made at all when the signed-in role may not call op (the server
 * refuses it anyway): returns null, which el() skips. Extra opts: testid, class, title.
 */
export function button(label, fn, opts = {}) {
  const api = opts.api || currentApi;
  if (opts.op && api && !api.may(opts.op)) return null;
  const node = el(
    "button",
    {
      type: "button",
      class: opts.class || null,
      title: opts.title || null,
      "data-testid": opts.testid || null,
      "data-op": opts.op || null,
    },
    label
  );
  node.addEventListener("click", async (ev) => {
    node.disabled = true;
    try {
      await fn(ev);
    } finally {
      node.disabled = false;
    }
  });
  return node;
}

function compare(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined || a === "") return 1;
  if (b === null || b === undefined || b === "") return -1;
  const numeric = (v) => typeof v === "number" || typeof v === "bigint";
  if (numeric(a) && numeric(b)) {
    // 64-bit ids may be BigInt (msgpack.js): compare two integers exactly, else as numbers.
    const whole = (v) => typeof v === "bigint" || Number.isInteger(v);
    if ((typeof a === "bigint" || typeof b === "bigint") && whole(a) && whole(b)) {
      const ba = BigInt(a), bb = BigInt(b);
      return ba < bb ? -1 : ba > bb ? 1 : 0;
    }
    return Number(a) - Number(b);
  }
  return display(a).localeCompare(display(b), undefined, { numeric: true });
}

/**
 * A table with a filter box and sortable headings. columns: [{key, title, render?, sort?}]
 * (render(row) -> Node or text; sort(row) -> the value to sort by, default row[key]).
 * opts: {onRowClick(row), key: "name" (row field for data-key), filter: true, empty: text,
 * testid}. Returns the wrapper element; `wrapper.update(rows)` redraws with new rows and keeps
 * the sort and the filter text.
 */
export function table(rows, columns, opts = {}) {
  let data = rows || [];
  let sortKey = opts.sortKey || null;
  let sortDir = opts.sortDir || 1;
  const filterBox =
    opts.filter === false
      ? null
      : el("input", {
          type: "search",
          class: "table-filter",
          placeholder: "Filter",
          "aria-label": "Filter rows",
          "data-testid": "table-filter",
        });
  const tbody = el("tbody");
  const heads = columns.map((col) =>
    el(
      "th",
      {
        "data-testid": `th-${col.key}`,
        "data-key": col.key,
        class: "sortable",
        "on:click": () => {
          sortDir = sortKey === col.key ? -sortDir : 1;
          sortKey = col.key;
          draw();
        },
      },
      col.title ?? col.key
    )
  );
  const tableEl = el("table", { class: "data" }, el("thead", {}, el("tr", {}, heads)), tbody);
  const count = el("span", { class: "table-count", "data-testid": "table-count" });
  const wrapper = el(
    "div",
    { class: "table-wrap", "data-testid": opts.testid || "table" },
    filterBox ? el("div", { class: "table-tools" }, filterBox, count) : null,
    tableEl
  );

  function text(row) {
    return columns.map((c) => display(row[c.key])).join(" ").toLowerCase();
  }

  function draw() {
    const needle = filterBox ? filterBox.value.trim().toLowerCase() : "";
    let shown = needle ? data.filter((r) => text(r).includes(needle)) : data.slice();
    if (sortKey) {
      const col = columns.find((c) => c.key === sortKey);
      const val = col && col.sort ? col.sort : (r) => r[sortKey];
      shown.sort((a, b) => sortDir * compare(val(a), val(b)));
    }
    for (const th of heads) {
      th.classList.toggle("sorted-asc", th.dataset.key === sortKey && sortDir === 1);
      th.classList.toggle("sorted-desc", th.dataset.key === sortKey && sortDir === -1);
    }
    clear(tbody);
    if (shown.length === 0) {
      tbody.appendChild(
        el("tr", { class: "empty", "data-testid": "empty" }, el("td", { colspan: columns.length }, opts.empty || "Nothing here."))
      );
    }
    for (const row of shown) {
      const tr = el(
        "tr",
        {
          "data-testid": "table-row",
          "data-key": opts.key ? display(row[opts.key]) : null,
          class: opts.onRowClick ? "clickable" : null,
        },
        columns.map((c) => el("td", { "data-col": c.key }, c.render ? c.render(row) : display(row[c.key])))
      );
      if (opts.onRowClick) tr.addEventListener("click", () => opts.onRowClick(row));
      tbody.appendChild(tr);
    }
    count.textContent = needle ? `${shown.length} of ${data.length}` : `${data.length}`;
  }

  if (filterBox) filterBox.addEventListener("input", draw);
  wrapper.update = (newRows) => {
    data = newRows || [];
    draw();
  };
  draw();
  return wrapper;
}

/** Run an action of a page (`fn`, returning a promise), show its error in `errors` (cleared
 * first), then read the page again (`then`) whatever became of it. */
export async function attempt(errors, fn, then) {
  clear(errors);
  try {
    await fn();
  } catch (err) {
    errors.appendChild(errorBox(err));
  }
  await then();
}
