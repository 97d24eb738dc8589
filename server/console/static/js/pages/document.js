// The Document page (#/task/NAME, #/job/NAME; ?version=N shows an earlier version; ?new=1 starts
// a new one): a saved task or job as TOML or JSON text, edited in a textarea and saved with
// task.add / job.add; the server's validation errors listed by field path, with the line each
// path is on; the versions (task.history / job.history) and what changed between two of them
// (a line diff computed here); for a job, its steps and branches drawn as nested boxes.
//
// The text is written here (toToml, toJson) from the document the server sends, and saved as
// text with a file name (.toml or .json) so the server parses it exactly as `taskfleet task add
// FILE` would. Why TOML by default: it is what `taskfleet task show` prints and what the docs
// use; a multi-line script reads as it is written, where JSON shows it with "\n".
//
// testids: doc-title, doc-format (select: toml | json), doc-editor (textarea), doc-gutter (line
// numbers; a line with a problem has data-bad), doc-save, doc-reset, doc-launch, doc-saved
// (after a save), doc-problems (the list), doc-problem (each: data-path, data-line),
// doc-versions (table), version-a, version-b (selects), doc-compare, doc-diff (the diff),
// diff-line (data-op = same | add | del), job-drawing, job-step (data-step), job-condition,
// error.

import { el, clear, table, time, errorBox, display } from "../ui.js";

export async function render(root, ctx, params) {
  const { api, navigate } = ctx;
  const kind = params.kind === "job" ? "job" : "task";
  const query = params.query || {};
  const isNew = Boolean(query.new);
  const name = isNew ? "" : params.name || "";
  root.setAttribute("data-page", "document");
  const canSave = api.may(`${kind}.add`);

  let shown = null; // {document, version, saved_at, saved_by, ...} from task.show / job.show
  if (!isNew) {
    try {
      const args = { name };
      if (query.version) args.version = Number(query.version);
      shown = await api.call(`${kind}.show`, args);
    } catch (err) {
      root.append(el("h1", { "data-testid": "doc-title" }, `${kind} ${name}`), errorBox(err));
      return;
    }
  }
  const doc = shown ? shown.document : template(kind);
  let format = query.format === "json" ? "json" : "toml";
  let text = write(doc, format);
  if (text === null) {
    format = "json";
    text = write(doc, "json");
  }

  const title = el(
    "h1",
    { "data-testid": "doc-title" },
    isNew ? `New ${kind}` : `${kind} ${name}`,
    shown ? el("small", {}, ` version ${shown.version}, saved ${time(shown.saved_at)}${shown.saved_by ? " by " + shown.saved_by : ""}`) : null
  );
  const formatBox = el(
    "select",
    { "data-testid": "doc-format", "aria-label": "Text format" },
    el("option", { value: "toml", selected: format === "toml" }, "TOML"),
    el("option", { value: "json", selected: format === "json" }, "JSON")
  );
  const editor = el("textarea", {
    "data-testid": "doc-editor",
    class: "doc-editor",
    spellcheck: "false",
    rows: "24",
    "aria-label": `${kind} document`,
    readonly: canSave ? null : true,
  });
  editor.value = text;
  const gutter = el("pre", { class: "doc-gutter", "data-testid": "doc-gutter", "aria-hidden": "true" });
  const problems = el("div", { class: "doc-problems" });
  const saveButton = canSave ? el("button", { type: "button", class: "primary", "data-testid": "doc-save" }, "Save") : null;
  const resetButton = el("button", { type: "button", "data-testid": "doc-reset" }, "Undo my edits");
  const launch =
    shown && api.may("run.start")
      ? el("button", { type: "button", "data-testid": "doc-launch", "on:click": () => navigate(`#/launch?task=${encodeURIComponent(name)}`) }, "Run…")
      : null;
  let bad = new Set();

  function drawGutter() {
    const n = editor.value.split("\n").length;
    clear(gutter);
    for (let i = 1; i <= n; i++) {
      gutter.appendChild(el("span", { class: bad.has(i) ? "line bad" : "line", "data-bad": bad.has(i) ? "true" : null }, `${bad.has(i) ? "!" : " "}${String(i).padStart(4)}`));
      gutter.appendChild(document.createTextNode("\n"));
    }
  }
  editor.addEventListener("input", () => {
    if (editor.value.split("\n").length !== gutter.childElementCount) drawGutter();
  });
  editor.addEventListener("scroll", () => {
    gutter.scrollTop = editor.scrollTop;
  });

  formatBox.addEventListener("change", () => {
    // Switching format rewrites the text from the document the text holds now, if it parses;
    // else from the saved one.
    const next = formatBox.value;
    let current = doc;
    if (format === "json") {
      try {
        current = JSON.parse(editor.value);
      } catch {
        current = doc;
      }
    }
    const written = write(current, next);
    if (written === null) {
      formatBox.value = format;
      clear(problems).appendChild(errorBox({ code: "format", message: `this ${kind} has no ${next.toUpperCase()} form` }));
      return;
    }
    format = next;
    editor.value = written;
    bad = new Set();
    clear(problems);
    drawGutter();
  });
  resetButton.addEventListener("click", () => {
    editor.value = write(doc, format) ?? write(doc, "json");
    bad = new Set();
    clear(problems);
    drawGutter();
  });
  if (saveButton) {
    saveButton.addEventListener("click", async () => {
      clear(problems);
      bad = new Set();
      saveButton.disabled = true;
      try {
        const saved = await api.call(`${kind}.add`, { text: editor.value, filename: `document.${format}` });
        problems.appendChild(
          el("p", { class: "ok", "data-testid": "doc-saved" }, `Saved ${kind} ${display(saved.name)} as version ${display(saved.version ?? "")}.`)
        );
        const hash = `#/${kind}/${encodeURIComponent(saved.name)}`;
        setTimeout(() => navigate(hash), 600); // show the new version, its history and drawing
      } catch (err) {
        showProblems(err);
      } finally {
        saveButton.disabled = false;
      }
    });
  }

  function showProblems(err) {
    problems.appendChild(errorBox(err));
    if (err.code !== "invalid_document") return;
    const found = parseProblems(err.message || "");
    if (!found.length) return;
    const where = locate(editor.value, format);
    const list = el("ul", { "data-testid": "doc-problems", class: "problems" });
    for (const p of found) {
      const line = lineFor(where, p.path) ?? syntaxLine(p.problem);
      if (line !== null) bad.add(line);
      list.appendChild(
        el(
          "li",
          { "data-testid": "doc-problem", "data-path": p.path, "data-line": line === null ? null : String(line) },
          el("code", {}, p.path),
          ": ",
          p.problem,
          line === null ? null : [" ", el("button", { type: "button", class: "link", "on:click": () => selectLine(editor, line) }, `line ${line}`)]
        )
      );
    }
    problems.appendChild(list);
    drawGutter();
  }

  const editorBox = el("div", { class: "doc-edit" }, gutter, editor);
  lineUp(editorBox, gutter, editor);
  root.append(
    el("header", { class: "page-head" }, title, formatBox, saveButton, resetButton, launch),
    shown && shown.summary ? el("p", { class: "summary" }, display(shown.summary)) : null,
    editorBox,
    problems
  );
  drawGutter();

  if (kind === "job" && Array.isArray(doc.steps)) {
    root.append(el("h2", {}, "Steps"), drawJob(doc));
  }
  if (!isNew) await versions(root, api, kind, name, shown, () => format);
}

/** The gutter's numbers must sit on the textarea's lines whatever the stylesheet says: the
 * same font, size, line height and padding, side by side, no wrapping. Set through the CSSOM,
 * which the CSP allows (it refuses only inline style attributes). */
function lineUp(box, gutter, editor) {
  box.style.display = "flex";
  box.style.alignItems = "stretch";
  for (const node of [gutter, editor]) {
    node.style.fontFamily = "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace";
    node.style.fontSize = "13px";
    node.style.lineHeight = "18px";
    node.style.padding = "6px 4px";
    node.style.margin = "0";
    node.style.boxSizing = "border-box";
  }
  gutter.style.flex = "none";
  gutter.style.overflow = "hidden";
  gutter.style.height = "auto";
  gutter.style.userSelect = "none";
  editor.style.flex = "1";
  editor.style.minHeight = "432px";
  editor.style.resize = "vertical";
  editor.setAttribute("wrap", "off");
  gutter.style.maxHeight = "none";
  // The gutter follows the textarea's height as it is resized.
  if (typeof ResizeObserver !== "undefined") {
    new ResizeObserver(() => {
      gutter.style.height = `${editor.offsetHeight}px`;
    }).observe(editor);
  }
}

// ---- versions and diff ------------------------------------------------------------------

async function versions(root, api, kind, name, shown, formatNow) {
  let rows;
  try {
    rows = await api.call(`${kind}.history`, { name });
  } catch (err) {
    root.appendChild(errorBox(err));
    return;
  }
  const box = el("section", { class: "doc-versions" }, el("h2", {}, "Versions"));
  box.appendChild(
    table(
      rows.slice().reverse(),
      [
        { key: "version", title: "version", render: (r) => el("a", { href: `#/${kind}/${encodeURIComponent(name)}?version=${r.version}` }, `${r.version}${r.current ? " (current)" : ""}`) },
        { key: "saved_at", title: "saved", render: (r) => time(r.saved_at) },
        { key: "saved_by", title: "by" },
        { key: "summary", title: "what changed" },
      ],
      { key: "version", testid: "doc-versions", filter: false }
    )
  );
  if (rows.length >= 2) {
    const pick = (testid, chosen) =>
      el("select", { "data-testid": testid }, rows.map((r) => el("option", { value: String(r.version), selected: r.version === chosen }, `version ${r.version}`)));
    const newest = rows[rows.length - 1].version;
    const here = shown ? shown.version : newest;
    const a = pick("version-a", here === rows[0].version ? rows[1].version : rows[rows.findIndex((r) => r.version === here) - 1]?.version ?? rows[0].version);
    const b = pick("version-b", here);
    if (a.value === b.value) a.value = String(rows[0].version);
    const out = el("div", { class: "doc-diff-box" });
    const compare = el("button", { type: "button", "data-testid": "doc-compare" }, "Compare");
    compare.addEventListener("click", async () => {
      clear(out);
      try {
        const [x, y] = await Promise.all([
          api.call(`${kind}.show`, { name, version: Number(a.value) }),
          api.call(`${kind}.show`, { name, version: Number(b.value) }),
        ]);
        const fmt = formatNow();
        const tx = write(x.document, fmt) ?? write(x.document, "json");
        const ty = write(y.document, fmt) ?? write(y.document, "json");
        out.appendChild(diffView(diffLines(tx.split("\n"), ty.split("\n")), a.value, b.value));
      } catch (err) {
        out.appendChild(errorBox(err));
      }
    });
    box.append(el("div", { class: "doc-compare" }, "What changed from ", a, " to ", b, " ", compare), out);
  }
  root.appendChild(box);
}

function diffView(ops, from, to) {
  const changed = ops.filter((o) => o.op !== "same").length;
  const pre = el("pre", { class: "diff", "data-testid": "doc-diff" });
  for (const o of ops) {
    const mark = o.op === "add" ? "+ " : o.op === "del" ? "- " : "  ";
    pre.appendChild(el("span", { class: `diff-${o.op}`, "data-testid": "diff-line", "data-op": o.op }, mark + o.text));
    pre.appendChild(document.createTextNode("\n"));
  }
  return el("div", {}, el("p", {}, changed ? `${changed} line(s) differ between version ${from} and version ${to}.` : `Versions ${from} and ${to} are the same.`), pre);
}

/**
 * A line diff by longest common subsequence: [{op: "same" | "del" | "add", text}], deletions
 * of a changed stretch before its additions. The common head and tail are taken off first, so
 * the table is only as big as the changed middle; a middle too big to compare (over four
 * million cells) is shown as all removed then all added.
 */
export function diffLines(a, b) {
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) head++;
  let tail = 0;
  while (tail < a.length - head && tail < b.length - head && a[a.length - 1 - tail] === b[b.length - 1 - tail]) tail++;
  const x = a.slice(head, a.length - tail);
  const y = b.slice(head, b.length - tail);
  const out = a.slice(0, head).map((text) => ({ op: "same", text }));
  if (x.length * y.length > 4_000_000) {
    for (const text of x) out.push({ op: "del", text });
    for (const text of y) out.push({ op: "add", text });
  } else {
    // lcs[i][j]: the longest common subsequence of x[i:] and y[j:].
    const n = x.length, m = y.length;
    const lcs = Array.from({ length: n + 1 }, () => new Int32Array(m + 1));
    for (let i = n - 1; i >= 0; i--) {
      for (let j = m - 1; j >= 0; j--) {
        lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
      }
    }
    let i = 0, j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && x[i] === y[j]) {
        out.push({ op: "same", text: x[i] });
        i++;
        j++;
      } else if (j >= m || (i < n && lcs[i + 1][j] >= lcs[i][j + 1])) {
        out.push({ op: "del", text: x[i++] });
      } else {
        out.push({ op: "add", text: y[j++] });
      }
    }
  }
  for (const text of a.slice(a.length - tail)) out.push({ op: "same", text });
  return out;
}

// ---- validation problems ----------------------------------------------------------------

const PROBLEM = /^\s+- ([^:\n]+): (.+)$/gm;

/** The {path, problem} list of an invalid document, from the server's message (one
 * "  - path: problem" line each, as protocol/errors.py ValidationError writes them). */
export function parseProblems(message) {
  return [...message.matchAll(PROBLEM)].map((m) => ({ path: m[1].trim(), problem: m[2] }));
}

/** The line (1-based) of a field path, or of its nearest parent that is in the text; null. */
export function lineFor(where, path) {
  let p = path;
  while (p) {
    if (where.has(p)) return where.get(p);
    const cut = Math.max(p.lastIndexOf("."), p.lastIndexOf("["));
    if (cut <= 0) break;
    p = p.slice(0, cut);
  }
  return null;
}

/** A text that does not parse: the parser's message names the line ("at line 2, column 7",
 * "line 2 column 7"). */
export function syntaxLine(problem) {
  const m = /\bline (\d+)/.exec(problem);
  return m ? Number(m[1]) : null;
}

function selectLine(editor, line) {
  const lines = editor.value.split("\n");
  let start = 0;
  for (let i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
  editor.focus();
  editor.setSelectionRange(start, start + (lines[line - 1] || "").length);
  const lineHeight = editor.scrollHeight / Math.max(1, lines.length);
  editor.scrollTop = Math.max(0, (line - 3) * lineHeight);
}

/** Where each field path ("name", "params.script", "steps[1].then[0].task") starts in a
 * document's text: a Map path -> line (1-based). */
export function locate(text, format) {
  return format === "json" ? locateJson(text) : locateToml(text);
}

/** JSON: a scanner that follows the nesting and notes the line of every key and array item;
 * it stops quietly at a syntax error (the server names that one). */
export function locateJson(text) {
  const where = new Map();
  let i = 0;
  let line = 1;
  const ws = () => {
    while (i < text.length && " \t\r\n".includes(text[i])) {
      if (text[i] === "\n") line++;
      i++;
    }
  };
  const str = () => {
    let s = "";
    i++; // the opening quote
    while (i < text.length && text[i] !== '"') {
      if (text[i] === "\\") {
        s += text[i + 1];
        i += 2;
      } else {
        if (text[i] === "\n") line++;
        s += text[i++];
      }
    }
    i++;
    return s;
  };
  const value = (path) => {
    ws();
    if (path) where.set(path, where.get(path) ?? line);
    const c = text[i];
    if (c === "{") {
      i++;
      ws();
      if (text[i] === "}") return void i++;
      for (;;) {
        ws();
        if (text[i] !== '"') throw new Error("key");
        const keyLine = line;
        const key = str();
        const sub = path ? `${path}.${key}` : key;
        where.set(sub, keyLine);
        ws();
        if (text[i++] !== ":") throw new Error(":");
        value(sub);
        ws();
        if (text[i] === ",") { i++; continue; }
        if (text[i] === "}") return void i++;
        throw new Error("}");
      }
    }
    if (c === "[") {
      i++;
      ws();
      if (text[i] === "]") return void i++;
      for (let k = 0; ; k++) {
        value(`${path}[${k}]`);
        ws();
        if (text[i] === ",") { i++; continue; }
        if (text[i] === "]") return void i++;
        throw new Error("]");
      }
    }
    if (c === '"') return void str();
    while (i < text.length && !",}] \t\r\n".includes(text[i])) i++;
  };
  try {
    value("");
  } catch {
    // what was found before the error is still useful
  }
  return where;
}

/** TOML (the shapes documents use): [table] and [[array.of.tables]] headers (nested ones
 * index into the array's last item), and `key = value` lines; the lines of a multi-line
 * string are skipped. An inline array or table is found at its key's line. */
export function locateToml(text) {
  const where = new Map();
  const counts = new Map(); // array-of-tables path -> items so far
  let prefix = "";
  let inString = null;
  const resolve = (keys, arrayItem) => {
    let path = "";
    keys.forEach((k, n) => {
      path = path ? `${path}.${k}` : k;
      const last = n === keys.length - 1;
      if (last && arrayItem) {
        const c = (counts.get(path) ?? 0) + 1;
        counts.set(path, c);
        path = `${path}[${c - 1}]`;
      } else if (counts.has(path)) {
        path = `${path}[${counts.get(path) - 1}]`;
      }
    });
    return path;
  };
  text.split("\n").forEach((raw, n) => {
    const lineNo = n + 1;
    if (inString) {
      if (raw.split(inString).length % 2 === 0) inString = null;
      return;
    }
    const s = raw.trim();
    if (!s || s.startsWith("#")) return;
    let m = /^\[\[\s*([^\]]+?)\s*\]\]/.exec(s);
    if (m) {
      prefix = resolve(splitKey(m[1]), true);
      where.set(prefix, lineNo);
      return;
    }
    m = /^\[\s*([^\]]+?)\s*\]/.exec(s);
    if (m) {
      prefix = resolve(splitKey(m[1]), false);
      where.set(prefix, lineNo);
      return;
    }
    m = /^("(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_.-]+)\s*=\s*(.*)$/.exec(s);
    if (m) {
      const path = [prefix, ...splitKey(m[1])].filter(Boolean).join(".");
      where.set(path, lineNo);
      for (const q of ["'''", '"""']) {
        if (m[2].startsWith(q) && m[2].split(q).length % 2 === 0) inString = q;
      }
    }
  });
  return where;
}

function splitKey(key) {
  const parts = [];
  const re = /\s*("(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)\s*(?:\.|$)/g;
  let m;
  while ((m = re.exec(key)) && m[0]) {
    const k = m[1];
    parts.push(k.startsWith('"') ? JSON.parse(k) : k.startsWith("'") ? k.slice(1, -1) : k);
  }
  return parts;
}

// ---- writing a document as text ----------------------------------------------------------

/** The document as text in format ("toml" | "json"); null when TOML cannot hold it. */
export function write(doc, format) {
  if (format === "json") return JSON.stringify(doc, (_k, v) => (typeof v === "bigint" ? v.toString() : v), 2) + "\n";
  try {
    return toToml(doc);
  } catch {
    return null;
  }
}

/** A document as TOML, as admin/tomlout.py writes it (plain keys of a table before its
 * sub-tables; arrays of tables as [[name]]; multi-line strings as ''' literals when they can
 * be). Throws for a value TOML cannot hold (null). */
export function toToml(doc) {
  const lines = [];
  tomlTable(doc, [], lines, null);
  return lines.join("\n").replace(/^\n+/, "") + "\n";
}

const isTableArray = (v) => Array.isArray(v) && v.length > 0 && v.every((x) => isPlainObject(x));
const isPlainObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const BARE = /^[A-Za-z0-9_-]+$/;
const ESC = { "\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r" };

function tomlTable(table, path, lines, header) {
  if (header !== null) lines.push("", header);
  const nested = [];
  for (const [key, value] of Object.entries(table)) {
    if (isPlainObject(value) || isTableArray(value)) nested.push([key, value]);
    else lines.push(`${tomlKey(key)} = ${tomlValue(value, [...path, key])}`);
  }
  for (const [key, value] of nested) {
    const sub = [...path, key];
    const name = sub.map(tomlKey).join(".");
    if (isPlainObject(value)) tomlTable(value, sub, lines, `[${name}]`);
    else for (const item of value) tomlTable(item, sub, lines, `[[${name}]]`);
  }
}

const tomlKey = (k) => (BARE.test(k) ? k : tomlBasic(k));
const control = (c) => c < " " || c === "\x7f";
const escape = (c) => ESC[c] || `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`;
const tomlBasic = (s) => '"' + [...s].map((c) => (c in ESC || control(c) ? escape(c) : c)).join("") + '"';

function tomlValue(v, path) {
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v === "bigint") return v.toString();
  if (typeof v === "number") {
    if (Number.isNaN(v)) return "nan";
    if (!Number.isFinite(v)) return v > 0 ? "inf" : "-inf";
    return String(v);
  }
  if (typeof v === "string") {
    if (!v.includes("\n")) return tomlBasic(v);
    const literal = !v.includes("'''") && !v.endsWith("'") && ![...v].some((c) => control(c) && c !== "\n" && c !== "\t");
    if (literal) return "'''\n" + v + "'''";
    return '"""\n' + [...v].map((c) => (c === "\n" || c === "\t" ? c : c in ESC || control(c) ? escape(c) : c)).join("") + '"""';
  }
  if (Array.isArray(v)) return "[" + v.map((x) => tomlValue(x, path)).join(", ") + "]";
  if (isPlainObject(v)) {
    const parts = Object.entries(v).map(([k, x]) => `${tomlKey(k)} = ${tomlValue(x, [...path, k])}`);
    return parts.length ? "{ " + parts.join(", ") + " }" : "{}";
  }
  throw new Error(`${path.join(".") || "(top)"}: ${v === null ? "null" : typeof v} has no TOML form`);
}

function template(kind) {
  if (kind === "job") {
    return {
      name: "new-job",
      type: "client-job",
      description: "",
      steps: [{ id: "first", task: "NAME-OF-A-TASK" }],
    };
  }
  return {
    name: "new-task",
    type: "run-script",
    timeout_s: 60,
    description: "",
    params: { interpreter: "sh", script: "echo hello\n" },
  };
}

// ---- a job drawn -------------------------------------------------------------------------

/** A job's steps as nested boxes: each task or job step with what it runs, each condition as
 * its text with its `then` and `else` branches side by side. */
export function drawJob(job) {
  const list = (steps, path) =>
    el(
      "ol",
      { class: "job-steps" },
      (steps || []).map((step, k) => {
        const here = `${path}[${k}]`;
        if (step && "if" in step) {
          return el(
            "li",
            { class: "job-condition", "data-testid": "job-condition", "data-path": here },
            el("div", { class: "cond" }, "if ", el("code", {}, display(step.if))),
            el(
              "div",
              { class: "branches" },
              el("div", { class: "branch then" }, el("div", { class: "branch-name" }, "then"), step.then ? list(step.then, `${here}.then`) : el("p", { class: "hint" }, "nothing")),
              el("div", { class: "branch else" }, el("div", { class: "branch-name" }, "else"), step.else ? list(step.else, `${here}.else`) : el("p", { class: "hint" }, "nothing"))
            )
          );
        }
        const ref = step.task ?? step.job;
        const what = step.job !== undefined ? "job" : "task";
        const id = display(step.id ?? ref);
        return el(
          "li",
          { class: "job-step", "data-testid": "job-step", "data-step": id, "data-path": here },
          el("strong", {}, id),
          " runs ",
          what,
          " ",
          el("a", { href: `#/${what}/${encodeURIComponent(display(ref))}` }, display(ref)),
          step.timeout_s ? ` (time limit ${step.timeout_s} s)` : "",
          step.on_failure === "continue" ? " (carries on when it fails)" : ""
        );
      })
    );
  return el(
    "div",
    { class: "job-drawing", "data-testid": "job-drawing" },
    el("p", { class: "hint" }, job.type === "server-job" ? "A server job: each step ends on every computer before the next one starts." : "A client job: each computer runs the steps by itself."),
    list(job.steps, "steps")
  );
}
