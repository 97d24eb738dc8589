// Messages raised for admins (a key mismatch, a full disk, a failed schedule), newest first,
// live: the page asks for messages.watch and puts each new message at the top as it arrives
// (the event carries no time: it is stamped with the browser's clock until the next reload).
// After a reconnect ("resync" event) the list is read again, so nothing from the gap is lost.
//
// testids: messages-table, message-row-ID (data-severity), messages-live (data-state =
// live | off), error.

import { ago, badge, clear, display, el, errorBox, time } from "../ui.js";
import { pagedTable } from "./computers.js";

const KEEP = 1000;

export async function render(root, ctx) {
  const { api } = ctx;
  const errors = el("div");
  const live = el("span", { class: "table-count", "data-testid": "messages-live", "data-state": "off" }, "");
  let rows = [];

  const table = pagedTable(
    [
      { key: "at", title: "When", render: (m) => el("span", { title: ago(m.at) }, time(m.at)) },
      { key: "severity", title: "Severity", render: (m) => badge(m.severity) },
      { key: "text", title: "Message" },
      { key: "source", title: "Source" },
    ],
    {
      testid: "messages-table",
      filter: true,
      rowTestid: (m) => `message-row-${display(m.id)}`,
      rowAttrs: (m) => ({ "data-severity": m.severity }),
      empty: "No messages.",
    }
  );

  async function load() {
    clear(errors);
    try {
      rows = await api.call("messages.list", { limit: KEEP });
      table.update(rows);
    } catch (err) {
      errors.appendChild(errorBox(err));
    }
  }

  const off = api.onEvent((ev) => {
    if (ev.kind === "message" && ev.data) {
      if (rows.some((m) => display(m.id) === display(ev.data.id))) return;
      rows = [{ at: Date.now() / 1000, ...ev.data }, ...rows].slice(0, KEEP);
      table.update(rows);
    } else if (ev.kind === "resync") {
      load();
    }
  });
  ctx.onCleanup(off);
  root.append(el("div", { class: "toolbar" }, el("h1", {}, "Messages"), live), errors, table);
  try {
    await api.call("messages.watch");
    live.textContent = "live";
    live.dataset.state = "live";
  } catch (err) {
    live.textContent = "not live";
    errors.appendChild(errorBox(err));
  }
  await load();
}
