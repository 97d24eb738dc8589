// The console's shell: sign-in, the nav bar (the admin's name, role and the connection's state),
// and the hash router that loads one page module per route (static/js/pages/<page>.js).
//
// A page module: `export async function render(root, ctx, params)`; root is an empty element
// with data-page="<page>", ctx = {api, navigate(hash), onCleanup(fn)}, params = the route's
// parts ({name} or {id}, and for #/task/NAME and #/job/NAME also {kind}) plus `query` (the
// part after "?"). Cleanups run when the route changes or the admin signs out.
//
// testids: signin-form, signin-token, signin-submit, signin-error, nav, nav-<page>, whoami,
// admin-name, admin-role, conn-state (data-state = open | reconnecting | signed_out | closed),
// sign-out, banner, not-built (a page whose module is missing), page-error.
//
// The token is kept in sessionStorage (this tab only; gone when the tab closes): never in
// localStorage, a cookie or the URL.

import { connect } from "./api.js";
import { clear, el, errorBox, setApi } from "./ui.js";

const TOKEN_KEY = "taskfleet.token";

/** Routes: the hash's first part -> the page module and the names of the following parts. */
export const ROUTES = {
  fleet: { page: "fleet" },
  computers: { page: "computers" },
  computer: { page: "computer", parts: ["name"] },
  tasks: { page: "tasks" },
  task: { page: "document", parts: ["name"], fixed: { kind: "task" } },
  job: { page: "document", parts: ["name"], fixed: { kind: "job" } },
  launch: { page: "launch" },
  runs: { page: "runs" },
  run: { page: "run", parts: ["id"] },
  keys: { page: "keys" },
  tokens: { page: "tokens" },
  admins: { page: "admins" },
  audit: { page: "audit" },
  messages: { page: "messages" },
  schedules: { page: "schedules" },
  policies: { page: "policies" },
};

const DEFAULT_ROUTE = "#/fleet";

/** The nav bar: label, route, and the op whose role it needs (an entry the role may not use is hidden). */
const NAV = [
  ["Fleet", "fleet", "computers.list"],
  ["Computers", "computers", "computers.list"],
  ["Tasks & jobs", "tasks", "tasks.list"],
  ["Launch", "launch", "run.start"],
  ["Runs", "runs", "runs.list"],
  ["Messages", "messages", "messages.list"],
  ["Schedules", "schedules", "schedules.list"],
  ["Policies", "policies", "policies.list"],
  ["Keys", "keys", "keys.list"],
  ["Tokens", "tokens", "tokens.list"],
  ["Admins", "admins", "admins.list"],
  ["Audit", "audit", "audit.list"],
];

let api = null;
let cleanups = [];
let generation = 0;

/** "#/computer/web-01?tab=runs" -> {route, page, params: {name: "web-01", query: {tab: "runs"}}}. */
export function parseHash(hash) {
  const raw = (hash || "").replace(/^#\/?/, "");
  const [path, search = ""] = raw.split("?", 2);
  const parts = path.split("/").filter((p) => p !== "").map(safeDecode);
  const name = parts[0] || "fleet";
  const route = Object.prototype.hasOwnProperty.call(ROUTES, name) ? ROUTES[name] : null;
  const params = { query: Object.fromEntries(new URLSearchParams(search)) };
  if (!route) return { route: name, page: null, params };
  (route.parts || []).forEach((key, i) => {
    params[key] = parts.slice(i + 1, i === route.parts.length - 1 ? undefined : i + 2).join("/");
  });
  Object.assign(params, route.fixed || {});
  return { route: name, page: route.page, params };
}

function safeDecode(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

/** Go to a route ("#/run/12"); the hashchange listener renders it. */
export function navigate(hash) {
  const target = hash.startsWith("#") ? hash : "#" + hash;
  if (window.location.hash === target) renderRoute();
  else window.location.hash = target;
}

function runCleanups() {
  const fns = cleanups;
  cleanups = [];
  for (const fn of fns) {
    try {
      fn();
    } catch (exc) {
      console.error("page cleanup failed", exc);
    }
  }
}

async function renderRoute() {
  if (!api) return;
  runCleanups();
  const mine = ++generation;
  const main = clear(document.getElementById("main"));
  const { route, page, params } = parseHash(window.location.hash || DEFAULT_ROUTE);
  markNav(route);
  if (!page) {
    main.appendChild(el("div", { class: "notice", "data-testid": "not-found" }, `There is no page "${route}".`));
    return;
  }
  const root = el("section", { class: "page", "data-page": page });
  main.appendChild(root);
  const ctx = {
    api,
    navigate,
    onCleanup(fn) {
      if (mine === generation) cleanups.push(fn);
      else fn(); // the route already changed: clean up at once
    },
  };
  let module;
  try {
    module = await import(`./pages/${page}.js`);
  } catch (exc) {
    if (mine !== generation) return;
    console.error(`pages/${page}.js did not load`, exc);
    root.appendChild(
      el("div", { class: "notice", "data-testid": "not-built" }, "This page is not built yet.", el("small", {}, ` (pages/${page}.js: ${exc.message})`))
    );
    return;
  }
  if (mine !== generation) return;
  try {
    await module.render(root, ctx, params);
  } catch (exc) {
    if (mine !== generation) return;
    console.error(`pages/${page}.js failed`, exc);
    root.appendChild(el("div", { "data-testid": "page-error" }, errorBox(exc)));
  }
}

function markNav(route) {
  const current = route === "computer" ? "computers" : route === "task" || route === "job" ? "tasks" : route === "run" ? "runs" : route;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.route === current);
    if (a.dataset.route === current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function drawNav() {
  const nav = clear(document.getElementById("nav"));
  for (const [label, route, op] of NAV) {
    if (!api.may(op)) continue;
    nav.appendChild(el("a", { href: `#/${route}`, "data-route": route, "data-testid": `nav-${route}` }, label));
  }
  nav.hidden = false;
  document.getElementById("admin-name").textContent = api.admin;
  const role = document.getElementById("admin-role");
  role.textContent = api.role;
  role.dataset.role = api.role;
  document.getElementById("who").hidden = false;
}

const STATE_TEXT = {
  open: "connected",
  reconnecting: "reconnecting",
  signed_out: "signed out",
  closed: "closed",
};

function showState(state, detail) {
  const conn = document.getElementById("conn");
  conn.dataset.state = state;
  conn.textContent = STATE_TEXT[state] || state;
  conn.title = api ? `${api.server} (${api.url})` : "";
  const banner = document.getElementById("banner");
  if (state === "reconnecting") {
    const secs = Math.max(1, Math.round(detail.delay_ms / 1000));
    const why = detail.error ? ` (${detail.error.message})` : "";
    banner.textContent = `The connection to the server was lost; trying again in ${secs} s, attempt ${detail.attempt}${why}.`;
    banner.hidden = false;
  } else if (state === "open" && detail.reconnected) {
    banner.textContent = "Reconnected.";
    banner.hidden = false;
    setTimeout(() => {
      if (api && api.state === "open") banner.hidden = true;
    }, 3000);
  } else {
    banner.hidden = true;
  }
  if (state === "signed_out") {
    const err = detail.error;
    signOut(err ? `${err.message}` : "The server refused the token.");
  }
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  runCleanups();
  generation++;
  if (api) {
    const old = api;
    api = null;
    setApi(null);
    if (old.state !== "closed") old.close();
  }
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  document.getElementById("banner").hidden = true;
  showSignIn(message);
}

function showSignIn(message) {
  const main = clear(document.getElementById("main"));
  const input = el("input", {
    type: "password",
    id: "token",
    name: "token",
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "tfa_...",
    required: true,
    "data-testid": "signin-token",
  });
  const error = el("div", { class: "signin-error", role: "alert", "data-testid": "signin-error", hidden: !message }, message || "");
  const submit = el("button", { type: "submit", class: "primary", "data-testid": "signin-submit" }, "Sign in");
  const form = el(
    "form",
    { class: "signin", "data-testid": "signin-form", "data-page": "signin" },
    el("h1", {}, "Sign in to taskfleet"),
    el("label", { for: "token" }, "Admin token"),
    input,
    el("p", { class: "hint" }, "The token an admin gave you (taskfleet admins add NAME --role viewer). It is kept for this tab only."),
    submit,
    error
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    error.hidden = true;
    try {
      await signIn(input.value);
    } catch (exc) {
      error.textContent = exc.code === "unauthorized" ? `The server refused this token: ${exc.message}` : exc.message;
      error.dataset.code = exc.code || "error";
      error.hidden = false;
      submit.disabled = false;
      input.focus();
    }
  });
  main.appendChild(form);
  input.focus();
}

async function signIn(token) {
  const next = await connect(token);
  sessionStorage.setItem(TOKEN_KEY, token.trim());
  api = next;
  setApi(next);
  drawNav();
  next.onState(showState);
  if (!window.location.hash || window.location.hash === "#" || window.location.hash === "#/") {
    navigate(DEFAULT_ROUTE);
  } else {
    renderRoute();
  }
}

async function start() {
  document.getElementById("sign-out").addEventListener("click", () => signOut(""));
  window.addEventListener("hashchange", renderRoute);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (!saved) {
    showSignIn("");
    return;
  }
  try {
    await signIn(saved);
  } catch (exc) {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn(exc.message);
  }
}

start();
