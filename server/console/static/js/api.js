// The browser's admin client: the EXISTING admin protocol (docs/protocol.md §2 "Admins", §3, §4)
// over a same-origin WebSocket, binary frames, one msgpack map per frame (msgpack.js). The same
// operations, roles and audit as the CLI: the NS does not know (or care) that this is a browser,
// except that it checks the Origin header (a page of another site cannot open this socket).
//
//   const api = await connect(token);      // rejects an Error with .code and .message
//   api.role, api.admin, api.server        // from the welcome's config
//   await api.call("runs.list", {limit: 50})
//   const off = api.onEvent((ev) => ...)   // ev = {run_id, kind, data}; off() unsubscribes
//   api.may("run.start")                   // the server's op -> role table (welcome.config.op_roles)
//   api.onState((s) => ...)                // "open" | "reconnecting" | "signed_out" | "closed"
//   api.close()
//
// When the socket drops, the Api reconnects by itself with a growing delay (0.5 s .. 15 s) and
// says so through onState. Calls in flight when it dropped reject with code "disconnected".
// Subscriptions (run.watch, messages.watch) live on the server per connection, so after a
// reconnect the Api asks for each running watch again and hands every listener one event
// {run_id, kind: "resync", data: <the run view now>} — a page that keeps a run's state should
// replace it from that view (changes during the gap are not replayed). If the run ended in the
// gap, a {kind: "run", data: {status}} event follows the resync. If the token is refused on
// reconnect (revoked), the state becomes "signed_out" and no more attempts are made.
//
// Ids: 64-bit integers beyond 2^53 arrive as BigInt (see msgpack.js); send them back as they came.

import { decode, encode, idKey } from "./msgpack.js";

export const PROTOCOL_VERSION = 1;
export const ROLES = ["viewer", "operator", "admin"];
const CALL_TIMEOUT_MS = 120000;
const OPEN_TIMEOUT_MS = 10000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15000;
/** Handshake refusals that no retry can fix: the token is wrong or revoked. */
const FINAL_CODES = new Set(["unauthorized", "bad_role", "version_mismatch", "bad_identity"]);

function apiError(code, message) {
  const err = new Error(message);
  err.code = code;
  return err;
}

/** The WebSocket URL of this page's own origin (wss: for https:, ws: for http:). */
export function socketUrl(loc = window.location) {
  return (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host + "/";
}

/**
 * Open one socket and do the admin handshake. Resolves {ws, welcome}; rejects an Error with
 * .code (the server's refusal code, or "unreachable" when no answer came) and .message.
 */
function handshake(url, token, identity) {
  return new Promise((resolve, reject) => {
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (exc) {
      reject(apiError("unreachable", `cannot open ${url}: ${exc.message}`));
      return;
    }
    ws.binaryType = "arraybuffer";
    let done = false;
    const finish = (fn, value) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      fn(value);
    };
    const timer = setTimeout(() => {
      finish(reject, apiError("handshake_timeout", `no answer from ${url} within ${OPEN_TIMEOUT_MS / 1000} s`));
      ws.close();
    }, OPEN_TIMEOUT_MS);
    ws.onopen = () => {
      const hello = {
        type: "hello",
        id: "1",
        version: PROTOCOL_VERSION,
        role: "admin",
        identity,
        credentials: { token },
        capabilities: [],
        info: {},
      };
      ws.send(encode(hello));
    };
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = decode(new Uint8Array(ev.data));
      } catch (exc) {
        finish(reject, apiError("bad_frame", `the server sent what is not msgpack: ${exc.message}`));
        ws.close();
        return;
      }
      if (msg.type === "welcome") finish(resolve, { ws, welcome: msg });
      else if (msg.type === "error") finish(reject, apiError(msg.code, msg.message));
      else finish(reject, apiError("bad_handshake", `expected welcome or error, got ${msg.type}`));
    };
    ws.onclose = (ev) => {
      // Refused before any answer: no server there, a certificate the browser does not trust,
      // or the Origin check (HTTP 403). The browser does not tell which.
      finish(
        reject,
        apiError(
          "unreachable",
          `cannot reach the server at ${url} (closed ${ev.code}); is the NS running, and does ` +
            "this browser trust its certificate?"
        )
      );
    };
  });
}

export class Api {
  constructor(url, token, identity, ws, welcome) {
    this.url = url;
    this.identity = identity;
    this.state = "open";
    this._token = token;
    this._nextId = 1; // "1" was the hello
    this._pending = new Map();
    this._eventFns = new Set();
    this._stateFns = new Set();
    this._watches = new Map(); // idKey(run_id) -> args of the run.watch
    this._watchMessages = false;
    this._closed = false;
    this._retry = null;
    this._attach(ws, welcome);
  }

  _attach(ws, welcome) {
    const config = welcome.config || {};
    this.admin = String(config.admin ?? "");
    this.role = String(config.role ?? "viewer");
    this.server = String(welcome.server ?? "");
    this._opRoles = config.op_roles && typeof config.op_roles === "object" ? config.op_roles : {};
    this._ws = ws;
    ws.onmessage = (ev) => this._receive(ev.data);
    ws.onclose = (ev) => this._dropped(ev);
    ws.onerror = () => {};
  }

  /** True if this admin's role may call op (unknown ops need "admin", as on the server). */
  may(op) {
    const need = this._opRoles[op] || "admin";
    return ROLES.indexOf(this.role) >= ROLES.indexOf(need);
  }

  /** Run one operation. Resolves response.data; rejects an Error with .code and .message. */
  call(op, args = {}) {
    if (this.state !== "open") {
      return Promise.reject(apiError("disconnected", "not connected to the server; it reconnects by itself"));
    }
    const id = String(++this._nextId);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(apiError("timeout", `no answer to ${op} within ${CALL_TIMEOUT_MS / 1000} s`));
      }, CALL_TIMEOUT_MS);
      this._pending.set(id, { op, args, resolve, reject, timer });
      try {
        this._ws.send(encode({ type: "request", id, op, args }));
      } catch (exc) {
        clearTimeout(timer);
        this._pending.delete(id);
        reject(apiError("bad_request", `cannot send ${op}: ${exc.message}`));
      }
    }).then((data) => {
      this._remember(op, args, data);
      return data;
    });
  }

  _remember(op, args, data) {
    if (op === "run.watch" && data && data.status === "running") this._watches.set(idKey(args.run_id), args);
    if (op === "messages.watch") this._watchMessages = true;
  }

  /** Stop following a run (its page closed): forget it for reconnects and tell the NS, which
   *  stops sending its events to this connection. Failures do not matter: the run may be over. */
  unwatch(runId) {
    this._watches.delete(idKey(runId));
    if (this.state === "open") this.call("run.unwatch", { run_id: runId }).catch(() => {});
  }

  /** Listen to every event {run_id, kind, data}; returns the function that stops listening. */
  onEvent(fn) {
    this._eventFns.add(fn);
    return () => this._eventFns.delete(fn);
  }

  /** Listen to the connection state; fn(state, detail) at once and at every change. */
  onState(fn) {
    this._stateFns.add(fn);
    fn(this.state, {});
    return () => this._stateFns.delete(fn);
  }

  /** Close for good (sign out): no reconnect; calls in flight reject. */
  close() {
    this._closed = true;
    clearTimeout(this._retry);
    if (this._ws) this._ws.close(1000, "signed out");
    this._failPending("closed", "the console closed the connection");
    this._setState("closed", {});
  }

  _setState(state, detail) {
    this.state = state;
    for (const fn of this._stateFns) {
      try {
        fn(state, detail);
      } catch (exc) {
        console.error("state listener failed", exc);
      }
    }
  }

  _emit(event) {
    for (const fn of this._eventFns) {
      try {
        fn(event);
      } catch (exc) {
        console.error("event listener failed", exc);
      }
    }
  }

  _receive(raw) {
    let msg;
    try {
      msg = decode(new Uint8Array(raw));
    } catch (exc) {
      console.error("dropping a frame that does not decode", exc);
      this._ws.close(4400, "bad frame");
      return;
    }
    if (msg.type === "event") {
      if (msg.kind === "run") this._watches.delete(idKey(msg.run_id));
      this._emit({ run_id: msg.run_id, kind: msg.kind, data: msg.data || {} });
      return;
    }
    const waiter = msg.reply_to ? this._pending.get(msg.reply_to) : undefined;
    if (waiter) {
      this._pending.delete(msg.reply_to);
      clearTimeout(waiter.timer);
      if (msg.type === "response") waiter.resolve(msg.data ?? null);
      else if (msg.type === "error") waiter.reject(apiError(msg.code, msg.message));
      else waiter.reject(apiError("bad_message", `unexpected ${msg.type} in reply to ${waiter.op}`));
      return;
    }
    if (msg.type === "error") {
      // A refusal of the whole connection (token revoked, rate limited): the close follows.
      this._lastError = apiError(msg.code, msg.message);
    }
  }

  _failPending(code, message) {
    for (const waiter of this._pending.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(apiError(code, message));
    }
    this._pending.clear();
  }

  _dropped(ev) {
    this._ws = null;
    const last = this._lastError;
    this._lastError = null;
    this._failPending("disconnected", `the connection to the server closed (${ev.code})`);
    if (this._closed) return;
    if (ev.code === 4401) {
      const why = ev.reason || "the token was revoked or replaced";
      this._setState("signed_out", { error: last || apiError("unauthorized", `The server ended the session: ${why}. Sign in with a valid token.`) });
      return;
    }
    this._reconnect(0, last);
  }

  _reconnect(attempt, error) {
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt) * (0.75 + Math.random() / 2);
    this._setState("reconnecting", { attempt: attempt + 1, delay_ms: Math.round(delay), error });
    this._retry = setTimeout(async () => {
      if (this._closed) return;
      try {
        const { ws, welcome } = await handshake(this.url, this._token, this.identity);
        if (this._closed) {
          ws.close(1000, "signed out");
          return;
        }
        this._nextId = 1;
        this._attach(ws, welcome);
        this._setState("open", { reconnected: true });
        await this._resubscribe();
      } catch (exc) {
        if (FINAL_CODES.has(exc.code)) this._setState("signed_out", { error: exc });
        else this._reconnect(attempt + 1, exc);
      }
    }, delay);
  }

  async _resubscribe() {
    if (this._watchMessages) await this.call("messages.watch").catch(() => {});
    for (const [key, args] of [...this._watches]) {
      try {
        const view = await this.call("run.watch", args);
        this._emit({ run_id: args.run_id, kind: "resync", data: view });
        if (view.status !== "running") {
          this._watches.delete(key);
          this._emit({ run_id: args.run_id, kind: "run", data: { status: view.status } });
        }
      } catch (exc) {
        this._watches.delete(key);
        console.error(`run.watch ${key} after reconnecting failed`, exc);
      }
    }
  }
}

/**
 * Sign in with an admin token: open the socket to this page's origin and say hello as an admin.
 * Resolves an Api; rejects an Error with .code ("unauthorized" for a bad token, "unreachable",
 * ...) and .message (the server's, which says what to do).
 */
export async function connect(token, opts = {}) {
  if (typeof token !== "string" || token.trim() === "") {
    throw apiError("bad_request", "enter an admin token (tfa_...)");
  }
  const url = opts.url || socketUrl();
  const identity = opts.identity || "console";
  const { ws, welcome } = await handshake(url, token.trim(), identity);
  return new Api(url, token.trim(), identity, ws, welcome);
}
