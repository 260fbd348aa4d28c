// Drover dashboard script: actions through the JSON API, live updates over server-sent
// events, and the log viewer. Plain JavaScript, no build step; served by the coordinator.
"use strict";

const csrf = (document.querySelector('meta[name="csrf"]') || {}).content || "";

async function api(method, url, body) {
  const opts = { method, headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(url, opts);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { message: text }; }
  if (!r.ok) {
    throw new Error((data && data.message) || r.status + " " + r.statusText);
  }
  return data;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

function jobLink(id) {
  return el("a", { href: "/ui/jobs/" + id, class: "created-job" }, id);
}

function showResult(target, ...nodes) {
  const box = document.getElementById("action-result") || target;
  if (!box) return;
  box.replaceChildren(...nodes);
}

function showError(err) {
  showResult(null, el("p", { class: "error" }, String(err.message || err)));
}

// ------------------------------------------------------------------ actions

document.addEventListener("click", async (ev) => {
  const b = ev.target.closest("button");
  if (!b) return;
  try {
    if (b.classList.contains("retry")) {
      b.disabled = true;
      const r = await api("POST", "/api/v1/jobs/" + b.dataset.job + "/retry");
      ensureResultBox();
      showResult(null, el("p", { class: "ok" }, "Created job ", jobLink(r.job.id)));
      refreshSoon();
    } else if (b.classList.contains("cancel")) {
      b.disabled = true;
      await api("POST", "/api/v1/jobs/" + b.dataset.job + "/cancel");
      ensureResultBox();
      showResult(null, el("p", { class: "ok" }, "Cancel requested."));
      refreshSoon();
    } else if (b.classList.contains("retry-group")) {
      const r = await api("POST", "/api/v1/jobs/retry", {
        fingerprint: b.dataset.fingerprint, queue: b.dataset.queue, limit: 1000,
      });
      showResult(null, el("p", { class: "ok" }, "Retried " + r.created.length + " jobs."));
    } else if (b.classList.contains("pause-queue") || b.classList.contains("resume-queue")) {
      const verb = b.classList.contains("pause-queue") ? "pause" : "resume";
      await api("POST", "/api/v1/queues/" + encodeURIComponent(b.dataset.queue) + "/" + verb);
      location.reload();
    } else if (b.id === "logout") {
      await api("POST", "/ui/logout");
      location.href = "/ui/login";
    } else if (b.id === "bulk-preview") {
      await bulkPreview();
    } else if (b.id === "bulk-confirm") {
      b.disabled = true;
      const r = await api("POST", "/api/v1/jobs/retry", bulkFilter(false));
      document.getElementById("bulk-result").replaceChildren(
        el("p", { class: "ok", id: "bulk-done" }, "Retried " + r.created.length + " jobs."));
      refreshSoon();
    }
  } catch (e) {
    b.disabled = false;
    ensureResultBox();
    showError(e);
  }
});

function ensureResultBox() {
  if (document.getElementById("action-result")) return;
  const main = document.querySelector("main");
  main.prepend(el("div", { id: "action-result" }));
}

function bulkFilter(dryRun) {
  const within = Number(document.getElementById("bulk-within").value || 0);
  return {
    state: document.getElementById("bulk-state").value,
    queue: document.getElementById("bulk-queue").value.trim(),
    // A google.protobuf.Duration in proto3 JSON; "0s" means any time.
    finished_within: within * 60 + "s",
    dry_run: dryRun,
    limit: 1000,
  };
}

async function bulkPreview() {
  const box = document.getElementById("bulk-result");
  const r = await api("POST", "/api/v1/jobs/retry", bulkFilter(true));
  const list = el("ul", { id: "bulk-list" });
  for (const j of r.matched) {
    list.append(el("li", { "data-job": j.id }, jobLink(j.id), " " + (j.spec.argv || []).join(" ")));
  }
  const nodes = [el("p", { id: "bulk-count" }, r.matched.length + " jobs match."), list];
  if (r.matched.length > 0) {
    nodes.push(el("button", { type: "button", id: "bulk-confirm" }, "Retry these " + r.matched.length + " jobs"));
  }
  box.replaceChildren(...nodes);
}

document.addEventListener("submit", async (ev) => {
  const f = ev.target;
  if (f.id !== "rerun") return;
  ev.preventDefault();
  const params = {};
  for (const i of f.querySelectorAll("input")) params[i.name] = i.value;
  const id = f.querySelector("button").dataset.job;
  try {
    const r = await api("POST", "/api/v1/jobs/" + id + "/retry", { set_params: params });
    ensureResultBox();
    showResult(null, el("p", { class: "ok" }, "Created job ", jobLink(r.job.id)));
  } catch (e) {
    showError(e);
  }
});

// ------------------------------------------------------------------ live updates

let refreshTimer = null;
let lastRefresh = 0;

// Re-reads the page's live parts (the job table, or the job's details) without a reload.
function refreshSoon() {
  if (refreshTimer) return;
  const wait = Math.max(0, 500 - (Date.now() - lastRefresh));
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    lastRefresh = Date.now();
    try {
      const r = await fetch(location.href, { credentials: "same-origin" });
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      for (const id of ["jobs", "job", "next-page"]) {
        const cur = document.getElementById(id);
        const fresh = doc.getElementById(id);
        if (cur && fresh) {
          if (id === "job") {
            const keep = document.getElementById("action-result");
            cur.replaceWith(fresh);
            const slot = document.getElementById("action-result");
            if (keep && slot) slot.replaceWith(keep);
          } else {
            cur.replaceWith(fresh);
          }
        }
      }
    } catch (_) { /* the next event retries */ }
  }, wait);
}

function connectEvents() {
  const live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  const es = new EventSource("/ui/events");
  es.addEventListener("open", () => { live.className = "on"; });
  es.addEventListener("error", () => { live.className = "off"; });
  es.addEventListener("header", (e) => {
    document.getElementById("hdr").innerHTML = e.data;
  });
  es.addEventListener("jobs", (e) => {
    const page = document.body.dataset.page;
    if (page === "jobs") {
      const job = document.getElementById("job");
      if (!job || e.data === "*" || e.data.split(",").includes(job.dataset.job)) refreshSoon();
    }
  });
}

// ------------------------------------------------------------------ log viewer

const ANSI_COLOURS = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"];

// Renders text with ANSI SGR colour codes as spans; other escape sequences are dropped.
function ansiToNodes(text, state) {
  const out = [];
  const re = /\x1b\[([0-9;]*)([A-Za-z])/g;
  let last = 0;
  let m;
  const push = (s) => {
    if (!s) return;
    if (!state.fg && !state.bg && !state.bold) { out.push(document.createTextNode(s)); return; }
    const span = document.createElement("span");
    const cls = [];
    if (state.fg) cls.push("fg-" + state.fg);
    if (state.bg) cls.push("bg-" + state.bg);
    if (state.bold) cls.push("bold");
    span.className = cls.join(" ");
    span.textContent = s;
    out.push(span);
  };
  while ((m = re.exec(text)) !== null) {
    push(text.slice(last, m.index));
    last = re.lastIndex;
    if (m[2] !== "m") continue;
    const codes = m[1] === "" ? [0] : m[1].split(";").map(Number);
    for (const c of codes) {
      if (c === 0) { state.fg = null; state.bg = null; state.bold = false; }
      else if (c === 1) state.bold = true;
      else if (c === 22) state.bold = false;
      else if (c >= 30 && c <= 37) state.fg = ANSI_COLOURS[c - 30];
      else if (c >= 90 && c <= 97) state.fg = "bright-" + ANSI_COLOURS[c - 90];
      else if (c === 39) state.fg = null;
      else if (c >= 40 && c <= 47) state.bg = ANSI_COLOURS[c - 40];
      else if (c === 49) state.bg = null;
    }
  }
  push(text.slice(last).replace(/\x1b/g, ""));
  return out;
}

function logViewer() {
  const pre = document.getElementById("log");
  if (!pre) return;
  const job = pre.dataset.job;
  const attempt = Number(pre.dataset.attempt);
  const status = document.getElementById("log-status");
  const earlier = document.getElementById("earlier");
  const followBox = document.getElementById("follow");
  let firstSeq = null;
  let lastSeq = -1;
  let source = null;
  // Lines are divs; a chunk without a final newline leaves its line open for the next.
  const ansi = { stdout: {}, stderr: {} };

  // Chunks carry raw bytes (base64): a character split across two chunks is decoded
  // whole by a streaming decoder per stream (the followed tail shares one set).
  const followDecoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };

  function bytesOf(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function renderChunks(chunks, decoders) {
    const frag = document.createDocumentFragment();
    let line = null;
    let lineStream = null;
    for (const c of chunks) {
      if (c.stream === "marker") {
        frag.append(el("div", { class: "line marker" }, c.text.trim()));
        line = null;
        continue;
      }
      const dec = decoders[c.stream] || (decoders[c.stream] = new TextDecoder());
      const parts = dec.decode(bytesOf(c.data), { stream: true }).split("\n");
      parts.forEach((p, i) => {
        // The text after a final newline is empty: no line yet.
        if (p === "" && i === parts.length - 1) return;
        if (line === null || lineStream !== c.stream) {
          line = el("div", { class: "line " + c.stream });
          lineStream = c.stream;
          frag.append(line);
        }
        line.append(...ansiToNodes(p, ansi[c.stream] || (ansi[c.stream] = {})));
        if (i < parts.length - 1) line = null;
      });
    }
    return frag;
  }

  function numberLines() {
    let n = 0;
    for (const l of pre.children) { n += 1; l.dataset.n = n; }
  }

  function nearBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
  }

  async function loadPage(before) {
    const url = "/api/v1/jobs/" + job + "/log?attempt=" + attempt + (before ? "&before=" + before : "");
    const r = await api("GET", url);
    if (r.logs_purged) status.textContent = "log removed by retention";
    else if (r.dropped_bytes > 0) status.textContent = r.dropped_bytes + " bytes dropped by the size cap";
    return r;
  }

  async function start() {
    try {
      const r = await loadPage(0);
      pre.append(renderChunks(r.chunks, followDecoders));
      firstSeq = r.chunks.length ? r.first_seq : null;
      lastSeq = r.last_seq;
      earlier.hidden = !r.more_before;
      numberLines();
      window.scrollTo(0, document.body.scrollHeight);
      if (followBox.checked && r.state !== "succeeded" && r.state !== "permanent_failed" && r.state !== "cancelled") follow();
      else follow(true);
    } catch (e) {
      status.textContent = String(e.message || e);
    }
  }

  // Follows from the last chunk shown; once the attempt has ended the stream closes.
  function follow(onceOnly) {
    if (source) source.close();
    source = new EventSource("/api/v1/jobs/" + job + "/log/follow?attempt=" + attempt + "&after=" + lastSeq);
    source.addEventListener("chunk", (e) => {
      const c = JSON.parse(e.data);
      if (c.stream !== "marker" && c.seq <= lastSeq) return;
      const stick = nearBottom();
      pre.append(renderChunks([c], followDecoders));
      if (c.stream !== "marker") lastSeq = c.seq;
      numberLines();
      if (stick && followBox.checked) window.scrollTo(0, document.body.scrollHeight);
    });
    source.addEventListener("end", (e) => {
      status.textContent = "attempt ended: " + e.data;
      pre.dataset.ended = "1";
      source.close();
    });
    source.addEventListener("error", () => {
      if (onceOnly) source.close();
    });
  }

  // One page of earlier output at a time: a click while one loads (a scroll to the top
  // also clicks) would prepend the same page twice.
  let loadingEarlier = false;
  earlier.addEventListener("click", async () => {
    if (firstSeq === null || loadingEarlier) return;
    loadingEarlier = true;
    try {
      const r = await loadPage(firstSeq);
      const height = document.body.scrollHeight;
      pre.prepend(renderChunks(r.chunks, {}));
      if (r.chunks.length) firstSeq = r.first_seq;
      earlier.hidden = !r.more_before;
      numberLines();
      window.scrollTo(0, window.scrollY + document.body.scrollHeight - height);
    } finally {
      loadingEarlier = false;
    }
  });
  window.addEventListener("scroll", () => {
    if (window.scrollY === 0 && !earlier.hidden) earlier.click();
  });
  document.getElementById("search").addEventListener("input", (e) => {
    const q = e.target.value;
    let first = null;
    for (const l of pre.children) {
      const hit = q !== "" && l.textContent.includes(q);
      l.classList.toggle("hit", hit);
      if (hit && !first) first = l;
    }
    if (first) first.scrollIntoView({ block: "center" });
  });
  document.getElementById("jump").addEventListener("change", (e) => {
    const l = pre.children[Number(e.target.value) - 1];
    if (l) {
      for (const x of pre.querySelectorAll(".jumped")) x.classList.remove("jumped");
      l.classList.add("jumped");
      l.scrollIntoView({ block: "center" });
    }
  });
  start();
}

connectEvents();
logViewer();
