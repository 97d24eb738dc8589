// Admins: who may use the console and the CLI, with their role; add one (name and role: the
// new token is shown once, here) and revoke one. Adding an existing name gives it a new token
// and role and ends its sessions, so the form says so before it does it.
//
// testids: admins-table, admin-row-NAME (data-state = active | revoked, data-role),
// revoke-admin-NAME, admin-form, admin-name-input, admin-role-select, admin-add,
// admin-new-token, error.

import { attempt, badge, button, clear, el, errorBox, time } from "../ui.js";
import { pagedTable } from "./computers.js";

const ROLES = ["viewer", "operator", "admin"];

export async function render(root, ctx) {
  const { api } = ctx;
  const errors = el("div");
  const fresh = el("div");
  let known = [];

  const table = pagedTable(
    [
      { key: "name", title: "Name" },
      { key: "role", title: "Role", render: (a) => badge(a.role) },
      { key: "state", title: "State", render: (a) => badge(a.revoked_at ? "revoked" : "active"), sort: (a) => (a.revoked_at ? 1 : 0) },
      { key: "created_at", title: "Added", render: (a) => time(a.created_at) },
      { key: "revoked_at", title: "Revoked", render: (a) => time(a.revoked_at) },
      {
        key: "actions",
        title: "",
        sort: () => 0,
        render: (a) =>
          a.revoked_at
            ? null
            : button(
                "Revoke",
                () => {
                  const self = a.name === api.admin ? " This is you: this console signs out." : "";
                  if (!window.confirm(`Revoke the token of ${a.name}?${self}`)) return;
                  return act(() => api.call("admins.revoke", { name: a.name }));
                },
                { op: "admins.revoke", class: "danger", testid: `revoke-admin-${a.name}`, api }
              ),
      },
    ],
    {
      testid: "admins-table",
      sortKey: "name",
      rowTestid: (a) => `admin-row-${a.name}`,
      rowAttrs: (a) => ({ "data-state": a.revoked_at ? "revoked" : "active", "data-role": a.role }),
      empty: "No admins.",
    }
  );

  async function load() {
    try {
      known = await api.call("admins.list");
      table.update(known);
      table.hidden = false;
    } catch (err) {
      table.hidden = true; // a refused list (a viewer): the error says why, no empty table
      errors.appendChild(errorBox(err));
    }
  }

  const act = (fn) => attempt(errors, fn, load);

  const name = el("input", { type: "text", placeholder: "name", maxlength: "64", "aria-label": "Admin name", "data-testid": "admin-name-input" });
  const role = el("select", { "aria-label": "Role", "data-testid": "admin-role-select" }, ROLES.map((r) => el("option", { value: r }, r)));
  const add = button(
    "Add admin",
    async () => {
      clear(fresh);
      const wanted = name.value.trim();
      if (!wanted) {
        clear(errors);
        errors.appendChild(errorBox({ code: "bad_request", message: "give the new admin a name" }));
        return;
      }
      const existing = known.find((a) => a.name === wanted && !a.revoked_at);
      if (existing && !window.confirm(`${wanted} exists: give a new token (role ${role.value})? Its old token stops working.`)) return;
      await act(async () => {
        const made = await api.call("admins.add", { name: wanted, role: role.value });
        name.value = "";
        fresh.appendChild(
          el(
            "div",
            { class: "card" },
            el("p", {}, `The token of ${made.name} (role ${made.role}). It is shown only now: hand it over safely.`),
            el("pre", { "data-testid": "admin-new-token" }, made.token)
          )
        );
      });
    },
    { op: "admins.add", class: "primary", testid: "admin-add", api }
  );
  const form = api.may("admins.add") ? el("div", { class: "toolbar", "data-testid": "admin-form" }, "New admin", name, "role", role, add) : null;
  root.append(el("h1", {}, "Admins"), ...(form ? [form] : []), fresh, errors, table);
  ctx.onCleanup(() => clear(fresh));
  await load();
}
