// The Launch page (#/launch, #/launch?task=NAME): pick a task or job, pick its targets
// (computers, groups, filters, or all), check (run.start with check=true: how many targets,
// which have no agent, which are offline), then start and go to the run's page.
//
// Only for roles that may call run.start: a viewer gets a notice, and the server refuses
// run.start anyway.
//
// testids: launch-what (select: the task or job), launch-all (checkbox), launch-computers (select multiple),
// launch-groups, launch-filters, launch-online-only (checkbox), launch-check (button),
// launch-plan (the check's answer: data-targets, data-no-agent, data-offline), launch-warning
// (each warning: data-kind = no_agent | offline | skipped), launch-start (button), launch-denied,
// error.

import { el, clear, errorBox, display } from "../ui.js";

export async function render(root, ctx, params) {
  const { api, navigate } = ctx;
  root.setAttribute("data-page", "launch");
  root.appendChild(el("header", { class: "page-head" }, el("h1", {}, "Launch a run")));
  if (!api.may("run.start")) {
    root.appendChild(
      el("p", { class: "notice", "data-testid": "launch-denied" }, `Your role (${api.role}) may not start runs; an operator or admin can.`)
    );
    return;
  }
  let tasks, jobs, computers, groups, filters;
  try {
    [tasks, jobs, computers, groups, filters] = await Promise.all([
      api.call("tasks.list"),
      api.call("jobs.list"),
      api.call("computers.list"),
      api.call("groups.list").catch(() => []),
      api.call("filters.list").catch(() => []),
    ]);
  } catch (err) {
    root.appendChild(errorBox(err));
    return;
  }
  const wanted = (params.query || {}).task || "";
  const taskBox = el(
    "select",
    { "data-testid": "launch-what", id: "launch-task" },
    el("option", { value: "" }, "choose a task or job"),
    el("optgroup", { label: "Tasks" }, tasks.map((t) => option(t.name, `${t.name} (${t.type}, ${t.kind})`, wanted))),
    el("optgroup", { label: "Jobs" }, jobs.map((j) => option(j.name, `${j.name} (${j.type})`, wanted)))
  );
  const all = el("input", { type: "checkbox", id: "launch-all", "data-testid": "launch-all" });
  const computerBox = multi("launch-computers", computers.map((c) => [c.name, `${c.name}${c.has_agent ? (c.online ? "" : " (offline)") : " (no agent)"}`]));
  const groupBox = multi("launch-groups", groups.map((g) => [display(g.name), display(g.name)]));
  const filterBox = multi("launch-filters", filters.map((f) => [display(f.name), display(f.name)]));
  const onlineOnly = el("input", { type: "checkbox", id: "launch-online-only", "data-testid": "launch-online-only" });
  const plan = el("div", { class: "launch-plan", "data-testid": "launch-plan", hidden: true });
  const message = el("div", { class: "launch-message" });
  const start = el("button", { type: "button", class: "primary", "data-testid": "launch-start", disabled: !wanted }, "Start");
  const check = el("button", { type: "button", "data-testid": "launch-check" }, "Check");
  let checked = null; // the arguments the plan shown was computed for

  function args() {
    const a = { task: taskBox.value };
    if (all.checked) a.all = true;
    else {
      a.computers = selected(computerBox);
      a.groups = selected(groupBox);
      a.filters = selected(filterBox);
    }
    if (onlineOnly.checked) a.online_only = true;
    return a;
  }

  function changed() {
    // The plan shown no longer matches the choice: check again before starting.
    checked = null;
    start.disabled = !taskBox.value;
    start.textContent = "Start";
    plan.hidden = true;
    for (const box of [computerBox, groupBox, filterBox]) box.disabled = all.checked;
  }

  async function doCheck() {
    clear(message);
    if (!taskBox.value) {
      message.appendChild(errorBox({ code: "bad_request", message: "choose a task or job first" }));
      return false;
    }
    const a = args();
    let r;
    try {
      r = await api.call("run.start", { ...a, check: true });
    } catch (err) {
      plan.hidden = true;
      message.appendChild(errorBox(err));
      return false;
    }
    const warned = showPlan(plan, r);
    checked = JSON.stringify(a);
    start.disabled = false;
    start.textContent = warned ? "Start anyway" : "Start";
    return true;
  }

  async function doStart() {
    const a = args();
    if (checked !== JSON.stringify(a)) {
      // Never start unseen: check first; with warnings, the next click starts.
      if (!(await doCheck())) return;
      if (plan.querySelector('[data-testid="launch-warning"]')) return;
    }
    clear(message);
    start.disabled = true;
    try {
      const r = await api.call("run.start", a);
      navigate(`#/run/${display(r.run_id)}`);
    } catch (err) {
      start.disabled = false;
      message.appendChild(errorBox(err));
    }
  }

  check.addEventListener("click", doCheck);
  start.addEventListener("click", doStart);
  for (const input of [taskBox, all, computerBox, groupBox, filterBox, onlineOnly]) input.addEventListener("change", changed);

  root.append(
    el(
      "form",
      { class: "launch", "on:submit": (e) => e.preventDefault() },
      field("Task or job", taskBox, "launch-task"),
      el("fieldset", {},
        el("legend", {}, "Targets"),
        el("label", { for: "launch-all" }, all, " every computer (--all)"),
        field("Computers", computerBox, "launch-computers"),
        field("Groups", groupBox, "launch-groups"),
        field("Filters", filterBox, "launch-filters"),
        el("p", { class: "hint" }, "A server task or a server job with only server steps needs no targets. Ctrl-click picks several."),
        el("label", { for: "launch-online-only" }, onlineOnly, " only computers online now (--online-only)")),
      el("div", { class: "actions" }, check, start)
    ),
    plan,
    message
  );
}

function option(name, label, wanted) {
  return el("option", { value: name, selected: name === wanted }, label);
}

function multi(testid, items) {
  return el(
    "select",
    { multiple: true, id: testid, "data-testid": testid, size: String(Math.min(8, Math.max(3, items.length))) },
    items.map(([value, label]) => el("option", { value }, label))
  );
}

function field(label, input, id) {
  return el("div", { class: "field" }, el("label", { for: id }, label), input);
}

function selected(box) {
  return [...box.selectedOptions].map((o) => o.value);
}

/** The check's answer as text, with one warning line for each thing that will not run
 * (returns whether there was one). `no_agent` is the list of those targets' names. */
export function showPlan(box, r) {
  clear(box);
  box.hidden = false;
  const noAgent = Array.isArray(r.no_agent) ? r.no_agent : [];
  const noAgentCount = Array.isArray(r.no_agent) ? r.no_agent.length : Number(r.no_agent || 0);
  box.dataset.targets = String(r.targets);
  box.dataset.noAgent = String(noAgentCount);
  box.dataset.offline = String(r.offline ?? 0);
  box.append(el("p", {}, `${r.targets} target(s).`));
  const warn = (kind, text) => box.append(el("p", { class: "warning", "data-testid": "launch-warning", "data-kind": kind }, text));
  if (noAgentCount) {
    const names = noAgent.slice(0, 20).join(", ") + (noAgent.length > 20 ? `, and ${noAgent.length - 20} more` : "");
    warn("no_agent", `${noAgentCount} target(s) have no agent: their instances fail at once ("no agent")${names ? ": " + names : ""}.`);
  }
  if (r.offline) warn("offline", `${r.offline} target(s) are offline now: they run when their agent connects, until the time limit.`);
  if (r.skipped_offline) warn("skipped", `${r.skipped_offline} offline target(s) left out (only computers online now).`);
  if (!noAgentCount && !r.offline) box.append(el("p", { class: "ok" }, "Every target can run it now."));
  return Boolean(noAgentCount || r.offline || r.skipped_offline);
}
