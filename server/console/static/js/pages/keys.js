// Keys: agent and task-server keys, pending first, with Accept (pending), Reject (pending or
// accepted) and Delete; the buttons exist only when the role may use them (api.may), and the
// server refuses anyway. Read again after each action, when the tab comes back into view, on a
// new message, and with Refresh: not on a timer, since every keys.list is audited (an open tab
// would fill the audit trail); unchanged data is not redrawn, so a button is not replaced under
// a click.
//
// testids: keys-state (select: pending | accepted | rejected | all), keys-table,
// key-row-NAME (data-state, data-role), key-NAME (the name cell, data-state), accept-NAME,
// reject-NAME, delete-NAME, accept-all, keys-done (the last action's outcome), error.

import { ago, badge, button, clear, display, el, errorBox, time } from "../ui.js";
import { pagedTable } from "./computers.js";

const ORDER = { pending: 0, accepted: 1, rejected: 2 };

export async function render(root, ctx, params) {
  const { api } = ctx;
  const errors = el("div");
  const done = el("div", { class: "notice", "data-testid": "keys-done", hidden: true });
  const state = el(
    "select",
    { "aria-label": "State", "data-testid": "keys-state" },
    ["all", "pending", "accepted", "rejected"].map((s) => el("option", { value: s }, s))
  );
  state.value = ["pending", "accepted", "rejected"].includes(params.query?.state) ? params.query.state : "all";
  let keys = [];
  let last = "";

  async function act(what, fn) {
    clear(errors);
    try {
      const out = await fn();
      done.textContent = `${what}: ${display(out)}`;
      done.hidden = false;
    } catch (err) {
      errors.appendChild(errorBox(err));
    }
    await load(true);
  }

  function actions(k) {
    const n = k.name;
    return el(
      "span",
      { class: "actions" },
      k.state === "pending" ? button("Accept", () => act(`accepted ${n}`, () => api.call("keys.accept", { names: [n] })), { op: "keys.accept", class: "primary", testid: `accept-${n}`, api }) : null,
      k.state !== "rejected" ? button("Reject", () => act(`rejected ${n}`, () => api.call("keys.reject", { name: n })), { op: "keys.reject", class: "danger", testid: `reject-${n}`, api }) : null,
      button(
        "Delete",
        () => {
          if (!window.confirm(`Delete every key of ${n}? It may enrol again.`)) return;
          return act(`deleted ${n}`, () => api.call("keys.delete", { name: n }));
        },
        { op: "keys.delete", class: "danger", testid: `delete-${n}`, api }
      )
    );
  }

  const table = pagedTable(
    [
      { key: "name", title: "Name", render: (k) => el("span", { "data-testid": `key-${k.name}`, "data-state": k.state }, k.name) },
      { key: "role", title: "Role" },
      { key: "state", title: "State", render: (k) => badge(k.state), sort: (k) => ORDER[k.state] ?? 9 },
      { key: "fingerprint", title: "Fingerprint", render: (k) => el("span", { class: "mono" }, k.fingerprint) },
      { key: "address", title: "From" },
      { key: "created_at", title: "Asked", render: (k) => el("span", { title: time(k.created_at) }, ago(k.created_at)) },
      { key: "decided_at", title: "Decided", render: (k) => time(k.decided_at) },
      { key: "actions", title: "", render: actions, sort: () => 0 },
    ],
    {
      testid: "keys-table",
      filter: true,
      sortKey: "state",
      rowTestid: (k) => `key-row-${k.name}`,
      rowAttrs: (k) => ({ "data-state": k.state, "data-role": k.role }),
      empty: "No keys in this state.",
    }
  );

  function show() {
    table.update(state.value === "all" ? keys : keys.filter((k) => k.state === state.value));
  }

  async function load(force = false) {
    try {
      const rows = await api.call("keys.list");
      const text = display(rows);
      if (force || text !== last) {
        last = text;
        keys = rows;
        show();
      }
      table.hidden = false;
    } catch (err) {
      table.hidden = true; // a refused list (a viewer): the error says why, no empty table
      clear(errors);
      errors.appendChild(errorBox(err));
    }
  }

  state.addEventListener("change", () => {
    history.replaceState(null, "", state.value === "all" ? "#/keys" : `#/keys?state=${state.value}`);
    show();
  });
  root.append(
    el(
      "div",
      { class: "toolbar" },
      el("h1", {}, "Keys"),
      state,
      button("Refresh", () => load(), { op: "keys.list", testid: "keys-refresh", api }),
      button(
        "Accept all pending",
        () => {
          if (!window.confirm("Accept every pending key?")) return;
          return act("accepted", () => api.call("keys.accept", { all: true }));
        },
        { op: "keys.accept", testid: "accept-all", api }
      )
    ),
    errors,
    done,
    table
  );
  // No polling: keys.list is an admin's operation, and every one is audited (a tab left open
  // would fill the audit trail). The list is read again after each action, when the tab comes
  // back into view, and on a new message (an agent waiting for acceptance raises one).
  if (api.may("keys.list")) {
    const onVisible = () => {
      if (document.visibilityState === "visible") load();
    };
    document.addEventListener("visibilitychange", onVisible);
    ctx.onCleanup(() => document.removeEventListener("visibilitychange", onVisible));
    const off = api.onEvent((event) => {
      if (event.kind === "message") load();
    });
    ctx.onCleanup(off);
    if (api.may("messages.watch")) api.call("messages.watch").catch(() => {});
  }
  await load(true);
}
