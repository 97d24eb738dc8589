// Enrolment tokens: the list (uses left, expiry, who made it, revoked), a form to create one
// (for agents or task servers, a time to live and a number of uses) and Revoke. A new token
// is shown once, here, and never again (the server keeps only its hash); it is not kept in the
// page's state after the page is left.
//
// testids: tokens-table, token-row-ID (data-state = active | used | expired | revoked),
// revoke-ID, token-form, token-for, token-ttl, token-uses, token-create, token-new (the new
// token's text), error.

import { ago, attempt, badge, button, clear, display, el, errorBox, time } from "../ui.js";
import { pagedTable } from "./computers.js";

const TTLS = [
  ["1 hour", 3600],
  ["1 day", 86400],
  ["7 days", 7 * 86400],
  ["30 days", 30 * 86400],
  ["365 days", 365 * 86400],
];

function stateOf(t) {
  if (t.revoked_at) return "revoked";
  if (t.uses_left <= 0) return "used";
  if (t.expires_at * 1000 < Date.now()) return "expired";
  return "active";
}

export async function render(root, ctx) {
  const { api } = ctx;
  const errors = el("div");
  const fresh = el("div");

  const table = pagedTable(
    [
      { key: "id", title: "Id" },
      { key: "role", title: "For" },
      { key: "state", title: "State", render: (t) => badge(stateOf(t)), sort: stateOf },
      { key: "uses_left", title: "Uses left" },
      { key: "expires_at", title: "Expires", render: (t) => el("span", { title: time(t.expires_at) }, ago(t.expires_at)) },
      { key: "created_at", title: "Created", render: (t) => time(t.created_at) },
      { key: "created_by", title: "By" },
      { key: "revoked_at", title: "Revoked", render: (t) => time(t.revoked_at) },
      {
        key: "actions",
        title: "",
        sort: () => 0,
        render: (t) =>
          stateOf(t) === "revoked"
            ? null
            : button("Revoke", () => act(() => api.call("tokens.revoke", { id: t.id })), { op: "tokens.revoke", class: "danger", testid: `revoke-${display(t.id)}`, api }),
      },
    ],
    {
      testid: "tokens-table",
      sortKey: "id",
      sortDir: -1,
      rowTestid: (t) => `token-row-${display(t.id)}`,
      rowAttrs: (t) => ({ "data-state": stateOf(t) }),
      empty: "No enrolment tokens.",
    }
  );

  async function load() {
    try {
      table.update(await api.call("tokens.list"));
      table.hidden = false;
    } catch (err) {
      table.hidden = true; // a refused list (a viewer): the error says why, no empty table
      errors.appendChild(errorBox(err));
    }
  }

  const act = (fn) => attempt(errors, fn, load);

  const role = el("select", { "aria-label": "For", "data-testid": "token-for" }, el("option", { value: "agent" }, "agents"), el("option", { value: "taskserver" }, "task servers"));
  const ttl = el("select", { "aria-label": "Time to live", "data-testid": "token-ttl" }, TTLS.map(([label, s]) => el("option", { value: String(s) }, label)));
  const uses = el("input", { type: "number", min: "1", max: "1000000", value: "1", "aria-label": "Uses", "data-testid": "token-uses" });
  const create = button(
    "Create token",
    async () => {
      clear(fresh);
      const n = Number(uses.value);
      if (!Number.isInteger(n) || n < 1 || n > 1000000) {
        clear(errors);
        errors.appendChild(errorBox({ code: "bad_request", message: "uses must be a whole number from 1 to 1,000,000" }));
        return;
      }
      await act(async () => {
        const made = await api.call("tokens.create", { role: role.value, ttl_s: Number(ttl.value), uses: n });
        fresh.appendChild(
          el(
            "div",
            { class: "card" },
            el("p", {}, `Token #${display(made.id)} for ${made.role}s, ${display(made.uses)} use(s), until ${time(made.expires_at)}. It is shown only now: copy it.`),
            el("pre", { "data-testid": "token-new" }, made.token)
          )
        );
      });
    },
    { op: "tokens.create", class: "primary", testid: "token-create", api }
  );
  const form = api.may("tokens.create")
    ? el("div", { class: "toolbar", "data-testid": "token-form" }, "New token for", role, "valid for", ttl, "uses", uses, create)
    : null;
  root.append(el("h1", {}, "Enrolment tokens"), ...(form ? [form] : []), fresh, errors, table);
  ctx.onCleanup(() => clear(fresh));
  await load();
}
