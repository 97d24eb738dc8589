// The Run page (#/run/ID, optional ?computer=NAME): every computer of a run as one cell of a
// grid drawn on a <canvas>, coloured by state and updated live from run.watch events.
//
// Why a canvas: a run may have 10,000 computers; 10,000 DOM cells cost layout and style work
// on every change, a canvas costs one fillRect per cell per frame (about a millisecond).
// Incoming changes are queued and applied once per requestAnimationFrame, so a burst of
// events (the NS sends one event per roll-up batch, up to 1,000 changes each) is one redraw.
//
// Why run.watch with instances=true even for big runs: each `instances` event carries exactly
// the changed rows (computer, state), so the page needs nothing else; with instances=false the
// counts events would oblige it to fetch every row again to colour the grid. `brief: true`
// leaves every row's output out of the snapshot (10,000 outputs would be megabytes); one
// computer's full output is fetched when it is clicked (run.show with `computer`).
//
// testids: run-title, run-status (data-state), run-stop, run-grid (the canvas), run-hover,
// count-<state> (one per instance state; data-count), run-filter-state, run-filter-name,
// cell-list (a <details> with one data-testid="cell-NAME" item per computer, data-state),
// run-detail (the selected computer: data-computer), output (its full output), detail-steps,
// detail-step (data-step, data-state), live-output, run-timeline, timeline-step (data-step),
// error.
// window.__taskfleetRunPage = {shown, lastApplied, frames, total}: for tests and the bench.

import { el, clear, badge, button, errorBox, time, display } from "../ui.js";

export const STATES = [
  "pending", "received", "running", "succeeded", "failed", "timed_out", "stopped",
];
const TERMINAL = new Set(["succeeded", "failed", "timed_out", "stopped"]);
// Progress only moves forward: a change older than the snapshot never undoes it.
const RANK = { pending: 0, received: 1, running: 2 };
const rank = (s) => (TERMINAL.has(s) ? 3 : RANK[s] ?? 0);
const COLOURS = {
  pending: "#d6d8dc",
  received: "#9cc3ea",
  running: "#1e6fd0",
  succeeded: "#2e8b3d",
  failed: "#c8302c",
  timed_out: "#e07b16",
  stopped: "#8a8f96",
};
const OTHER_COLOUR = "#b0a0d0";
const SERVER = "(server)";
// Up to this many computers, the text list of cells is kept in the DOM all the time; above,
// it is built when the reader opens it.
const LIST_ALWAYS = 2000;

/** The cell size in CSS pixels for a grid of n computers: big cells for small runs. */
export function cellSize(n) {
  if (n <= 64) return 28;
  if (n <= 400) return 18;
  if (n <= 2500) return 12;
  return 8;
}

/** Which grid index (into `visible`) the point (x, y) in CSS pixels falls on, or -1. */
export function hitIndex(x, y, cell, cols, count) {
  if (x < 0 || y < 0) return -1;
  const col = Math.floor(x / cell);
  const row = Math.floor(y / cell);
  if (col >= cols) return -1;
  const i = row * cols + col;
  return i < count ? i : -1;
}

export async function render(root, ctx, params) {
  const { api } = ctx;
  const runId = Number(params.id);
  root.setAttribute("data-page", "run");
  if (!Number.isInteger(runId) || runId <= 0) {
    root.appendChild(errorBox({ code: "bad_request", message: `not a run id: ${params.id}` }));
    return;
  }
  const page = new RunPage(root, ctx, runId, (params.query || {}).computer || null);
  ctx.onCleanup(() => page.close());
  await page.start();
}

class RunPage {
  constructor(root, ctx, runId, selected) {
    this.root = root;
    this.api = ctx.api;
    this.navigate = ctx.navigate;
    this.runId = runId;
    this.selected = selected;
    this.view = null;
    // The grid's model: one entry per computer, in name order.
    this.names = [];
    this.states = []; // state per computer index
    this.index = new Map(); // name -> index
    this.stepOrder = new Map(); // server job: step -> order it started, to keep a computer's latest
    this.cellStep = []; // server job: order of the step whose state the cell shows
    this.counts = Object.fromEntries(STATES.map((s) => [s, 0]));
    this.pending = []; // changes waiting for the next frame
    this.frame = 0;
    this.visible = []; // indexes shown under the current filter
    this.layout = { cell: 8, cols: 1 };
    this.listItems = null; // name -> <li> of the text alternative, when built
    this.closed = false;
    this.detailTimer = 0;
    this.liveWatching = false;
    this.stats = { shown: 0, lastApplied: 0, frames: 0, total: 0 };
    window.__taskfleetRunPage = this.stats;
    this.unsubscribe = this.api.onEvent((ev) => this.onEvent(ev));
  }

  close() {
    this.closed = true;
    if (this.unsubscribe) this.unsubscribe();
    this.api.unwatch(this.runId);
    if (this.frame) cancelAnimationFrame(this.frame);
    clearTimeout(this.detailTimer);
    if (this.resizeObserver) this.resizeObserver.disconnect();
  }

  async start() {
    let view;
    try {
      view = await this.api.call("run.watch", { run_id: this.runId, instances: true, brief: true });
    } catch (err) {
      this.root.appendChild(errorBox(err));
      return;
    }
    if (this.closed) {
      this.api.unwatch(this.runId); // closed while the watch was on its way: end it now
      return;
    }
    this.view = view;
    this.isServerJob = view.kind === "server-job";
    for (const [i, s] of (view.steps || []).entries()) this.stepOrder.set(s.step, i);
    this.load(view.instances || []);
    this.build();
    this.refilter();
    this.draw();
    this.stats.lastApplied = performance.now();
    if (this.pending.length) this.schedule(); // events that came with the snapshot
    if (this.selected) this.select(this.selected);
    if (this.isServerJob) this.showTimeline();
  }

  /** The snapshot: one cell per computer (a server job: its instance in the latest step). */
  load(rows) {
    const byName = new Map();
    for (const r of rows) {
      if (r.parent_id !== null && r.parent_id !== undefined) continue;
      if (r.computer === SERVER && this.isServerJob) continue; // in the timeline
      const order = this.isServerJob ? this.orderOf(r.step) : 0;
      const had = byName.get(r.computer);
      if (!had || order >= had.order) byName.set(r.computer, { state: r.status, order });
    }
    this.names = [...byName.keys()].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
    this.names.forEach((n, i) => {
      const v = byName.get(n);
      this.index.set(n, i);
      this.states.push(v.state);
      this.cellStep.push(v.order);
      this.counts[v.state] = (this.counts[v.state] || 0) + 1;
    });
    this.stats.total = this.names.length;
  }

  reset(view) {
    this.view = view;
    this.names = [];
    this.states = [];
    this.cellStep = [];
    this.index = new Map();
    this.counts = Object.fromEntries(STATES.map((s) => [s, 0]));
    this.load(view.instances || []);
    if (this.listItems || this.names.length <= LIST_ALWAYS) this.buildList();
    if (view.status !== "running") this.ended(view.status);
    this.refilter();
    this.draw();
    this.updateCounts();
    this.stats.lastApplied = performance.now();
  }

  orderOf(step) {
    if (!this.stepOrder.has(step)) this.stepOrder.set(step, this.stepOrder.size);
    return this.stepOrder.get(step);
  }

  build() {
    const v = this.view;
    this.statusBadge = el("span", { "data-testid": "run-status", "data-state": v.status }, badge(v.status));
    this.stopButton = button("Stop", () => this.stop(), { op: "run.stop", testid: "run-stop", class: "danger", api: this.api });
    if (this.stopButton && v.status !== "running") this.stopButton.hidden = true;
    this.message = el("div", { class: "run-message" });
    const head = el(
      "header",
      { class: "page-head" },
      el(
        "h1",
        { "data-testid": "run-title" },
        `Run ${display(v.id)}: `,
        el("a", { href: `#/${v.definition && v.definition.job ? "job" : "task"}/${encodeURIComponent(display(v.task_name))}` }, display(v.task_name))
      ),
      el("span", { class: "run-kind" }, display(v.kind)),
      this.statusBadge,
      el("span", { class: "run-times" }, `started ${time(v.created_at)}`, v.ended_at ? `, ended ${time(v.ended_at)}` : ""),
      this.stopButton
    );
    this.countEls = {};
    const counts = el("div", { class: "run-counts" });
    for (const s of STATES) {
      const n = el("span", { class: "count-n" }, "0");
      const item = el(
        "button",
        { type: "button", class: ["count", s], "data-testid": `count-${s}`, "data-count": "0", title: `show only ${s}`,
          "on:click": () => { this.stateFilter.value = this.stateFilter.value === s ? "" : s; this.refilter(); this.draw(); } },
        badge(s), " ", n
      );
      this.countEls[s] = { item, n };
      counts.appendChild(item);
    }
    this.total = el("span", { class: "count-total", "data-testid": "count-total" });
    counts.appendChild(this.total);
    this.stateFilter = el(
      "select",
      { "data-testid": "run-filter-state", "aria-label": "Filter by state", "on:change": () => { this.refilter(); this.draw(); } },
      el("option", { value: "" }, "every state"),
      STATES.map((s) => el("option", { value: s }, s)),
      el("option", { value: "@ended" }, "ended"),
      el("option", { value: "@unfinished" }, "not ended"),
      el("option", { value: "@bad" }, "not succeeded (ended)")
    );
    this.nameFilter = el("input", {
      type: "search", placeholder: "computer name contains", "aria-label": "Filter by computer name",
      "data-testid": "run-filter-name",
      "on:input": () => { this.refilter(); this.draw(); },
    });
    this.shownLabel = el("span", { class: "grid-shown", "data-testid": "grid-shown" });
    this.canvas = el("canvas", { "data-testid": "run-grid", class: "run-grid", role: "img", tabindex: "0" });
    this.hover = el("div", { class: "run-hover", "data-testid": "run-hover", "aria-live": "polite" }, "Point at a computer to see it; click to open its output.");
    this.canvas.addEventListener("mousemove", (e) => this.onHover(e));
    this.canvas.addEventListener("mouseleave", () => { this.canvas.title = ""; });
    this.canvas.addEventListener("click", (e) => {
      const name = this.nameAt(e);
      if (name !== null) this.select(name);
    });
    this.canvas.addEventListener("keydown", (e) => this.onKey(e));
    this.gridBox = el("div", { class: "run-grid-box" }, this.canvas);
    this.list = el("ul", { class: "cell-list" });
    this.details = el(
      "details",
      { "data-testid": "cell-list", class: "cell-list-box" },
      el("summary", {}, "Computers as a list"),
      this.list
    );
    this.details.addEventListener("toggle", () => { if (this.details.open && !this.listItems) this.buildList(); });
    this.detail = el("section", { class: "run-detail", "data-testid": "run-detail" }, el("p", { class: "hint" }, "Click a computer in the grid to see its output."));
    this.timeline = el("section", { class: "run-timeline-box" });
    clear(this.root).append(
      head,
      this.message,
      counts,
      el("div", { class: "run-filters" }, this.stateFilter, this.nameFilter, this.shownLabel),
      this.gridBox,
      this.hover,
      this.details,
      this.timeline,
      this.detail
    );
    if (this.names.length <= LIST_ALWAYS) this.buildList();
    if (typeof ResizeObserver !== "undefined") {
      let width = 0;
      this.resizeObserver = new ResizeObserver(() => {
        const w = this.gridBox.clientWidth;
        if (w !== width) { width = w; this.draw(); }
      });
      this.resizeObserver.observe(this.gridBox);
    }
    this.updateCounts();
  }

  buildList() {
    this.listItems = new Map();
    const frag = document.createDocumentFragment();
    this.names.forEach((name, i) => {
      const li = el("li", { "data-testid": `cell-${name}`, "data-state": this.states[i], "data-computer": name },
        el("button", { type: "button", class: "link", "on:click": () => this.select(name) }, name), ": ",
        el("span", { class: "cell-state" }, this.states[i]));
      this.listItems.set(name, li);
      frag.appendChild(li);
    });
    clear(this.list).appendChild(frag);
  }

  // ---- live changes -------------------------------------------------------------------

  onEvent(ev) {
    if (this.closed || Number(ev.run_id) !== this.runId) return;
    if (ev.kind === "instances") {
      const items = (ev.data && ev.data.items) || [];
      for (const it of items) this.pending.push(it);
      this.schedule();
    } else if (ev.kind === "run") {
      this.pending.push({ run_status: ev.data && ev.data.status });
      this.schedule();
    } else if (ev.kind === "resync" && ev.data && this.canvas) {
      // The connection came back (api.js watched again): the view replaces the model, as
      // changes during the gap are not replayed.
      this.pending = [];
      this.reset(ev.data);
    } else if (ev.kind === "output") {
      this.onOutput((ev.data && ev.data.items) || []);
    }
  }

  schedule() {
    if (!this.frame && !this.closed) this.frame = requestAnimationFrame(() => this.applyBatch());
  }

  /** Apply every change that arrived since the last frame, then draw once. */
  applyBatch() {
    this.frame = 0;
    if (this.closed || !this.canvas) return; // before the snapshot: kept for after it
    const batch = this.pending;
    this.pending = [];
    let newComputers = false;
    let selectedTouched = false;
    let runStatus = null;
    let stepsTouched = false;
    for (const it of batch) {
      if (it.run_status !== undefined) { runStatus = it.run_status; continue; }
      if (it.computer === this.selected) selectedTouched = true;
      if (it.parent_id !== null && it.parent_id !== undefined) continue; // a client job's step row
      if (this.isServerJob) stepsTouched = true;
      if (it.computer === SERVER && this.isServerJob) continue;
      let i = this.index.get(it.computer);
      if (i === undefined) {
        // A computer not in the snapshot (a server job's step reaching new targets).
        i = this.names.length;
        this.names.push(it.computer);
        this.index.set(it.computer, i);
        this.states.push(it.state);
        this.cellStep.push(this.isServerJob ? this.orderOf(it.step) : 0);
        this.counts[it.state] = (this.counts[it.state] || 0) + 1;
        newComputers = true;
        continue;
      }
      const order = this.isServerJob ? this.orderOf(it.step) : 0;
      if (order < this.cellStep[i]) continue; // an older step's change
      const old = this.states[i];
      if (order === this.cellStep[i] && rank(it.state) <= rank(old)) continue;
      this.cellStep[i] = order;
      this.counts[old] -= 1;
      this.counts[it.state] = (this.counts[it.state] || 0) + 1;
      this.states[i] = it.state;
      if (this.listItems) {
        const li = this.listItems.get(it.computer);
        if (li) { li.dataset.state = it.state; li.querySelector(".cell-state").textContent = it.state; }
      }
    }
    this.stats.total = this.names.length;
    if (newComputers && this.listItems) this.buildList();
    if (runStatus) this.ended(runStatus);
    this.refilter();
    this.draw();
    this.updateCounts();
    this.stats.lastApplied = performance.now();
    if (selectedTouched) this.refreshDetailSoon();
    if (stepsTouched || runStatus) this.refreshTimelineSoon();
  }

  ended(status) {
    this.view.status = status;
    this.statusBadge.dataset.state = status;
    clear(this.statusBadge).appendChild(badge(status));
    if (this.stopButton) this.stopButton.hidden = true;
  }

  updateCounts() {
    for (const s of STATES) {
      const n = this.counts[s] || 0;
      const { item, n: label } = this.countEls[s];
      label.textContent = String(n);
      item.dataset.count = String(n);
      item.classList.toggle("zero", n === 0);
    }
    this.total.textContent = `${this.names.length} computers`;
  }

  // ---- filter and drawing -------------------------------------------------------------

  matches(i) {
    const want = this.stateFilter ? this.stateFilter.value : "";
    const s = this.states[i];
    if (want === "@ended" && !TERMINAL.has(s)) return false;
    if (want === "@unfinished" && TERMINAL.has(s)) return false;
    if (want === "@bad" && (!TERMINAL.has(s) || s === "succeeded")) return false;
    if (want && !want.startsWith("@") && s !== want) return false;
    return true;
  }

  refilter() {
    const needle = this.nameFilter ? this.nameFilter.value.trim().toLowerCase() : "";
    const visible = [];
    for (let i = 0; i < this.names.length; i++) {
      if (!this.matches(i)) continue;
      if (needle && !this.names[i].toLowerCase().includes(needle)) continue;
      visible.push(i);
    }
    this.visible = visible;
    if (this.shownLabel) {
      this.shownLabel.textContent =
        visible.length === this.names.length ? `${visible.length} shown` : `${visible.length} of ${this.names.length} shown`;
    }
  }

  /** Redraw the whole grid: cells grouped by colour, so one fillStyle per state. */
  draw() {
    if (!this.canvas) return;
    const n = this.visible.length;
    const cell = cellSize(this.names.length);
    const width = Math.max(cell, this.gridBox.clientWidth || 800);
    const cols = Math.max(1, Math.floor(width / cell));
    const rows = Math.max(1, Math.ceil(n / cols));
    const ratio = window.devicePixelRatio || 1;
    const cssW = cols * cell;
    const cssH = rows * cell;
    if (this.canvas.width !== Math.round(cssW * ratio) || this.canvas.height !== Math.round(cssH * ratio)) {
      this.canvas.width = Math.round(cssW * ratio);
      this.canvas.height = Math.round(cssH * ratio);
      this.canvas.style.width = `${cssW}px`; // CSSOM, which the CSP allows (no style attribute)
      this.canvas.style.height = `${cssH}px`;
    }
    this.layout = { cell, cols };
    const g = this.canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, cssW, cssH);
    const gap = cell >= 12 ? 2 : 1;
    const byState = new Map();
    let shown = 0;
    for (let k = 0; k < n; k++) {
      const s = this.states[this.visible[k]];
      if (TERMINAL.has(s)) shown += 1;
      let list = byState.get(s);
      if (!list) byState.set(s, (list = []));
      list.push(k);
    }
    for (const [s, list] of byState) {
      g.fillStyle = COLOURS[s] || OTHER_COLOUR;
      for (const k of list) {
        g.fillRect((k % cols) * cell, Math.floor(k / cols) * cell, cell - gap, cell - gap);
      }
    }
    const sel = this.selected === null ? undefined : this.index.get(this.selected);
    const at = sel === undefined ? -1 : this.visible.indexOf(sel);
    if (at >= 0) {
      g.strokeStyle = "#111";
      g.lineWidth = 2;
      g.strokeRect((at % cols) * cell + 1, Math.floor(at / cols) * cell + 1, cell - gap - 2, cell - gap - 2);
    }
    this.canvas.setAttribute("aria-label", `${n} computers: ${STATES.map((s) => `${this.counts[s] || 0} ${s}`).join(", ")}`);
    this.stats.shown = shown;
    this.stats.frames += 1;
  }

  nameAt(e) {
    const r = this.canvas.getBoundingClientRect();
    const k = hitIndex(e.clientX - r.left, e.clientY - r.top, this.layout.cell, this.layout.cols, this.visible.length);
    return k < 0 ? null : this.names[this.visible[k]];
  }

  onHover(e) {
    const name = this.nameAt(e);
    if (name === null) { this.canvas.title = ""; return; }
    const text = `${name}: ${this.states[this.index.get(name)]}`;
    this.canvas.title = text;
    this.hover.textContent = text;
  }

  /** Arrow keys walk the grid (the hover line says where), Enter opens that computer. */
  onKey(e) {
    const n = this.visible.length;
    if (!n) return;
    const cols = this.layout.cols;
    const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: cols, ArrowUp: -cols, Home: -n, End: n };
    const at = this.cursor === undefined ? -1 : this.visible.indexOf(this.index.get(this.cursor));
    if (e.key === "Enter" && at >= 0) {
      e.preventDefault();
      this.select(this.cursor);
      return;
    }
    if (!(e.key in moves)) return;
    e.preventDefault();
    const k = Math.min(n - 1, Math.max(0, at < 0 ? 0 : at + moves[e.key]));
    this.cursor = this.names[this.visible[k]];
    this.hover.textContent = `${this.cursor}: ${this.states[this.visible[k]]} (Enter opens it)`;
  }

  // ---- one computer -------------------------------------------------------------------

  async select(name) {
    this.selected = name;
    this.draw();
    const q = `#/run/${this.runId}?computer=${encodeURIComponent(name)}`;
    if (location.hash !== q) history.replaceState(null, "", q);
    await this.showDetail();
    if (this.view.status === "running" && !this.liveWatching) {
      // Live output (a bonus): pieces of what scripts print, for every computer of the run;
      // the page keeps only the selected computer's.
      this.liveWatching = true;
      this.api.call("run.watch", { run_id: this.runId, instances: true, brief: true, output: true }).catch(() => {});
    }
  }

  refreshDetailSoon() {
    clearTimeout(this.detailTimer);
    this.detailTimer = setTimeout(() => this.showDetail(), 300);
  }

  async showDetail() {
    const name = this.selected;
    if (name === null) return;
    let view;
    try {
      view = await this.api.call("run.show", { run_id: this.runId, computer: name });
    } catch (err) {
      clear(this.detail).appendChild(errorBox(err));
      return;
    }
    if (this.closed || name !== this.selected) return;
    const rows = (view.instances || []).filter((r) => r.computer === name);
    const top = rows.filter((r) => r.parent_id === null || r.parent_id === undefined);
    const parts = [el("h2", {}, name)];
    if (!top.length) parts.push(el("p", {}, "This computer has no instance in this run."));
    for (const inst of top) {
      parts.push(this.instanceView(inst, rows.filter((r) => r.parent_id !== null && r.parent_id !== undefined && String(r.parent_id) === String(inst.id))));
    }
    this.liveText = el("pre", { class: "output live", "data-testid": "live-output", hidden: true });
    parts.push(this.liveText);
    const box = clear(this.detail);
    box.dataset.computer = name;
    box.append(...parts);
  }

  instanceView(inst, steps) {
    const def = this.view.definition || {};
    const facts = el(
      "dl",
      { class: "facts" },
      this.isServerJob ? [el("dt", {}, "step"), el("dd", {}, display(inst.step))] : null,
      el("dt", {}, "state"), el("dd", {}, badge(inst.status)),
      el("dt", {}, "return code"), el("dd", {}, inst.return_code === null ? "-" : display(inst.return_code)),
      el("dt", {}, "route"), el("dd", {}, display(inst.route) || "-"),
      el("dt", {}, "started"), el("dd", {}, time(inst.started_at) || "-"),
      el("dt", {}, "ended"), el("dd", {}, time(inst.ended_at) || "-"),
      inst.reason ? [el("dt", {}, "reason"), el("dd", {}, display(inst.reason))] : null
    );
    const out = el("pre", { class: "output", "data-testid": "output" }, display(inst.output) || "(no output)");
    const block = el("div", { class: "instance", "data-instance": display(inst.id) }, facts);
    if (def.type === "client-job" && def.job && Array.isArray(def.job.program)) {
      block.appendChild(el("h3", {}, "Steps"));
      block.appendChild(programView(def.job.program, steps, TERMINAL.has(inst.status)));
    }
    block.appendChild(el("h3", {}, def.type === "client-job" ? "The job's own output" : "Output"));
    block.appendChild(out);
    return block;
  }

  onOutput(items) {
    if (!this.liveText || this.selected === null) return;
    for (const it of items) {
      if (it.computer !== this.selected) continue;
      this.liveText.hidden = false;
      if (it.skipped) this.liveText.appendChild(document.createTextNode(`\n[… ${it.skipped} bytes skipped]\n`));
      this.liveText.appendChild(document.createTextNode(display(it.text)));
    }
  }

  // ---- a server job's steps -----------------------------------------------------------

  refreshTimelineSoon() {
    if (!this.isServerJob || this.timelineTimer) return;
    this.timelineTimer = setTimeout(() => { this.timelineTimer = 0; this.showTimeline(); }, 1000);
  }

  async showTimeline() {
    let view;
    try {
      view = await this.api.call("run.show", { run_id: this.runId, brief: true });
    } catch (err) {
      clear(this.timeline).appendChild(errorBox(err));
      return;
    }
    if (this.closed) return;
    clear(this.timeline).append(el("h2", {}, "Steps"), timelineView(view));
  }

  async stop() {
    try {
      const r = await this.api.call("run.stop", { run_id: this.runId });
      this.message.textContent = r.note ? r.note : `stopped ${r.stopped} instance(s)`;
    } catch (err) {
      clear(this.message).appendChild(errorBox(err));
    }
  }
}

/**
 * A client job's program as nested lists: each step with its state on this computer (from its
 * step rows), each condition as text with its `then` and `else` parts; a step with no row once
 * the job ended is marked "not taken" (a branch that did not lead there, or a stop before it).
 */
export function programView(program, stepRows, ended) {
  const byStep = new Map(stepRows.map((r) => [display(r.step), r]));
  function range(from, to) {
    const ul = el("ul", { class: "job-steps", "data-testid": "detail-steps" });
    let pc = from;
    while (pc < to) {
      const ins = program[pc];
      if (ins.op === "run") {
        const row = byStep.get(ins.step);
        const state = row ? row.status : ended ? "not taken" : "not yet";
        ul.appendChild(
          el("li", { "data-testid": "detail-step", "data-step": ins.step, "data-state": state },
            el("code", {}, ins.step), " ", (ins.task && ins.task.name && ins.task.name !== ins.step) ? `(${ins.task.name}) ` : "",
            row ? badge(row.status) : el("span", { class: "not-run" }, state),
            row && row.return_code !== null && row.return_code !== undefined ? ` rc ${row.return_code}` : "",
            row && row.reason ? ` (${row.reason})` : "",
            row && row.output ? el("pre", { class: "output step" }, display(row.output)) : null)
        );
        pc += 1;
      } else if (ins.op === "branch") {
        const elsePc = ins.else_pc;
        const jump = program[elsePc - 1];
        const end = jump && jump.op === "jump" ? jump.pc : elsePc;
        ul.appendChild(
          el("li", { class: "condition" },
            "if ", el("code", {}, display(ins.condition)),
            el("div", { class: "branch then" }, "then", range(pc + 1, elsePc - 1)),
            end > elsePc ? el("div", { class: "branch else" }, "else", range(elsePc, end)) : null)
        );
        pc = Math.max(end, pc + 1);
      } else {
        pc += 1;
      }
    }
    return ul;
  }
  return range(0, program.length);
}

/**
 * A server job's steps as a timeline: one bar per step from its start to its barrier (the
 * moment its last computer finished it), with its counts. Drawn in SVG (attributes only, no
 * inline style, which the CSP forbids).
 */
export function timelineView(view) {
  const steps = view.steps || [];
  const rows = (view.instances || []).filter((r) => r.parent_id === null || r.parent_id === undefined);
  const info = steps.map((s) => {
    const mine = rows.filter((r) => r.step === s.step);
    const counts = {};
    let barrier = null;
    let open = mine.length === 0;
    for (const r of mine) {
      counts[r.status] = (counts[r.status] || 0) + 1;
      if (!TERMINAL.has(r.status)) open = true;
      else if (r.ended_at !== null && (barrier === null || r.ended_at > barrier)) barrier = r.ended_at;
    }
    return { step: s.step, start: s.started_at, barrier: open ? null : barrier, counts, n: mine.length };
  });
  if (!info.length) return el("p", { "data-testid": "run-timeline" }, "No step has started yet.");
  const t0 = Math.min(...info.map((i) => Number(i.start)));
  const now = Date.now() / 1000;
  const t1 = Math.max(t0 + 1, ...info.map((i) => Number(i.barrier ?? now)));
  const W = 600, H = 22, labelW = 160;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", String(labelW + W + 10));
  svg.setAttribute("height", String(info.length * H + 10));
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "the job's steps over time");
  const list = el("ol", { class: "timeline-list" });
  info.forEach((s, k) => {
    const x = labelW + ((Number(s.start) - t0) / (t1 - t0)) * W;
    const end = labelW + ((Number(s.barrier ?? now) - t0) / (t1 - t0)) * W;
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", "0");
    label.setAttribute("y", String(k * H + 15));
    label.textContent = display(s.step);
    const bar = document.createElementNS(ns, "rect");
    bar.setAttribute("x", String(x));
    bar.setAttribute("y", String(k * H + 4));
    bar.setAttribute("width", String(Math.max(2, end - x)));
    bar.setAttribute("height", String(H - 8));
    const bad = Object.entries(s.counts).some(([st, c]) => c > 0 && TERMINAL.has(st) && st !== "succeeded");
    bar.setAttribute("fill", s.barrier === null ? COLOURS.running : bad ? COLOURS.failed : COLOURS.succeeded);
    svg.append(label, bar);
    if (s.barrier !== null) {
      // The barrier: every computer has finished this step, the next may start.
      const tick = document.createElementNS(ns, "line");
      tick.setAttribute("x1", String(end));
      tick.setAttribute("x2", String(end));
      tick.setAttribute("y1", String(k * H + 1));
      tick.setAttribute("y2", String(k * H + H - 1));
      tick.setAttribute("stroke", "#111");
      tick.setAttribute("stroke-width", "2");
      svg.append(tick);
    }
    const counts = Object.entries(s.counts).map(([st, c]) => `${c} ${st}`).join(", ");
    list.appendChild(
      el("li", { "data-testid": "timeline-step", "data-step": s.step },
        el("code", {}, display(s.step)), `: started ${time(s.start)}, `,
        s.barrier === null ? "not every computer has finished it" : `barrier ${time(s.barrier)} (${(Number(s.barrier) - Number(s.start)).toFixed(1)} s after its start)`,
        counts ? ` — ${counts}` : "")
    );
  });
  return el("div", { "data-testid": "run-timeline", class: "timeline" }, svg, list);
}
