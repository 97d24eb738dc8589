// Audit: who did what, newest first, narrowed on the server by who (an admin's name, exactly)
// and what (a prefix of the op: "keys" finds keys.accept, keys.reject, ...). The narrowing is
// kept in the hash's query (#/audit?who=vera&action=keys) so a link carries it.
//
// testids: audit-who, audit-action, audit-limit, audit-apply, audit-table,
// audit-row-ID (data-outcome), error.

import { ago, button, clear, display, el, errorBox, time } from "../ui.js";
import { pagedTable } from "./computers.js";

export async function render(root, ctx, params) {
  const { api } = ctx;
  const query = params.query || {};
  const errors = el("div");
  const who = el("input", { type: "search", placeholder: "who (exact name)", "aria-label": "Who", "data-testid": "audit-who", value: query.who || "" });
  const action = el("input", { type: "search", placeholder: "what (op or prefix: keys)", "aria-label": "What", "data-testid": "audit-action", value: query.action || "" });
  const limit = el(
    "select",
    { "aria-label": "How many", "data-testid": "audit-limit" },
    ["100", "1000", "10000"].map((n) => el("option", { value: n }, `newest ${n}`))
  );
  limit.value = ["100", "1000", "10000"].includes(query.limit) ? query.limit : "1000";

  const table = pagedTable(
    [
      { key: "at", title: "When", render: (e) => el("span", { title: ago(e.at) }, time(e.at)) },
      { key: "who", title: "Who" },
      { key: "action", title: "What" },
      { key: "detail", title: "Detail", render: (e) => el("span", { class: "mono" }, e.detail) },
      { key: "outcome", title: "Outcome" },
    ],
    {
      testid: "audit-table",
      filter: true,
      sortKey: "at",
      sortDir: -1,
      rowTestid: (e) => `audit-row-${display(e.id)}`,
      rowAttrs: (e) => ({ "data-outcome": e.outcome }),
      empty: "No entry matches.",
    }
  );

  async function load() {
    clear(errors);
    const args = { limit: Number(limit.value) };
    const qs = new URLSearchParams();
    if (who.value.trim()) qs.set("who", (args.who = who.value.trim()));
    if (action.value.trim()) qs.set("action", (args.action = action.value.trim()));
    if (limit.value !== "1000") qs.set("limit", limit.value);
    const hash = "#/audit" + (qs.toString() ? "?" + qs : "");
    if (window.location.hash !== hash) history.replaceState(null, "", hash);
    try {
      table.update(await api.call("audit.list", args));
      table.hidden = false;
    } catch (err) {
      table.hidden = true; // a refused list (a viewer): the error says why, no empty table
      errors.appendChild(errorBox(err));
    }
  }

  for (const input of [who, action]) input.addEventListener("keydown", (ev) => ev.key === "Enter" && load());
  limit.addEventListener("change", load);
  root.append(
    el("h1", {}, "Audit"),
    el("div", { class: "toolbar" }, who, action, limit, button("Show", load, { testid: "audit-apply" })),
    errors,
    table
  );
  await load();
}
