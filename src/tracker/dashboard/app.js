// p2pfs dashboard: polls the tracker's /api once a second and redraws the
// file list and the chosen file's holders, without reloading the page.
// Every name and address from the network goes into the page through
// textContent or a data attribute, never as HTML.
"use strict";

const POLL_MS = 1000;
// How long a holder that joined or finished stays highlighted, and one
// that left stays on the page (greyed), in milliseconds.
const MARK_MS = 5000;
// Most cells drawn for one holder; a bigger file has several chunks per
// cell (a cell is "held" if all of them are, "part" if some are).
const MAX_CELLS = 512;
// Above this many cells, smaller cells.
const DENSE_CELLS = 160;

const $ = (id) => document.getElementById(id);

let chosen = new URLSearchParams(location.search).get("file");
let holders = new Map(); // endpoint -> { row, parts, complete, joinedAt, finishedAt, goneAt }
let firstLoadOfFile = true;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function bytes(n) {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let u = 0;
  while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
  return u === 0 ? n + " bytes" : n.toFixed(n < 10 ? 1 : 0) + " " + units[u];
}

function plural(n, word) {
  return n + " " + word + (n === 1 ? "" : "s");
}

async function getJson(url) {
  const r = await fetch(url, { cache: "no-store" });
  // 404: no such file; 400: not a name any file can have (a bad ?file=).
  if (r.status === 404 || r.status === 400) return null;
  if (!r.ok) throw new Error(url + ": HTTP " + r.status);
  return r.json();
}

function setStatus(text, state) {
  const s = $("status");
  s.textContent = text;
  s.dataset.state = state;
}

function choose(name) {
  if (name === chosen) return;
  chosen = name;
  history.replaceState(null, "", "?file=" + encodeURIComponent(name));
  resetHolders();
  poll();
}

function resetHolders() {
  holders = new Map();
  firstLoadOfFile = true;
  $("holders").replaceChildren();
}

function drawFiles(list) {
  const body = $("file-rows");
  body.replaceChildren();
  $("no-files").hidden = list.files.length > 0;
  for (const f of list.files) {
    const tr = el("tr");
    tr.dataset.name = f.name;
    if (f.name === chosen) tr.classList.add("selected");
    tr.append(
      el("td", "name", f.name),
      el("td", "num", bytes(f.length)),
      el("td", "num", String(f.chunk_count)),
      el("td", "num", String(f.sources)),
      el("td", "num", String(f.complete_sources)),
    );
    tr.addEventListener("click", () => choose(f.name));
    body.append(tr);
  }
}

// Which cells are held: one cell per chunk, or per `per` chunks.
function cellStates(haveHex, count, per) {
  const bit = (i) => (parseInt(haveHex.substr((i >> 3) * 2, 2), 16) & (0x80 >> (i & 7))) !== 0;
  const states = [];
  for (let lo = 0; lo < count; lo += per) {
    const hi = Math.min(lo + per, count);
    let n = 0;
    for (let i = lo; i < hi; i++) if (bit(i)) n++;
    states.push(n === hi - lo ? "held" : n > 0 ? "part" : "none");
  }
  return states;
}

function newRow(endpoint) {
  const row = el("div", "holder");
  row.dataset.endpoint = endpoint;
  const head = el("div", "holder-head");
  const parts = {
    endpoint: el("span", "endpoint", endpoint),
    badge: el("span", "badge"),
    progress: el("span", "progress"),
    speed: el("span", "speed"),
    grid: el("div", "grid"),
  };
  head.append(parts.endpoint, parts.badge, parts.progress, parts.speed);
  row.append(head, parts.grid);
  return { row, parts, complete: false, joinedAt: 0, finishedAt: 0, goneAt: 0 };
}

function drawGrid(grid, states, per) {
  if (grid.children.length !== states.length) {
    grid.replaceChildren(...states.map(() => el("span", "cell none")));
  }
  grid.dataset.chunksPerCell = String(per);
  grid.classList.toggle("dense", states.length > DENSE_CELLS);
  states.forEach((s, i) => {
    const c = grid.children[i];
    if (c.dataset.state !== s) {
      c.className = "cell " + s;
      c.dataset.state = s;
    }
  });
  grid.dataset.held = String(states.filter((s) => s === "held").length);
}

function mark(h, now) {
  let badge = "";
  let cls = "";
  if (h.goneAt) { badge = "left"; cls = "gone"; }
  else if (now - h.finishedAt < MARK_MS) { badge = "finished"; cls = "finished"; }
  else if (now - h.joinedAt < MARK_MS) { badge = "joined"; cls = "joined"; }
  else if (h.complete) { badge = "complete"; cls = "complete"; }
  h.row.className = "holder" + (cls ? " " + cls : "");
  h.parts.badge.textContent = badge;
  h.parts.badge.className = "badge" + (cls ? " " + cls : "");
  h.parts.badge.hidden = badge === "";
}

function drawHolders(detail) {
  const now = Date.now();
  const f = detail.file;
  const count = f.chunk_count;
  const per = Math.max(1, Math.ceil(count / MAX_CELLS));
  $("chosen-name").textContent = f.name;
  $("chosen-facts").textContent =
    bytes(f.length) + " in " + plural(count, "chunk") + " of " + bytes(f.chunk_size) +
    " · " + plural(f.sources, "source") + ", " + f.complete_sources + " complete";
  $("cell-scale").textContent = per > 1 ? "(one cell = " + per + " chunks)" : "(one cell = one chunk)";
  const present = new Set();
  for (const d of detail.holders) {
    present.add(d.endpoint);
    let h = holders.get(d.endpoint);
    if (!h) {
      h = newRow(d.endpoint);
      holders.set(d.endpoint, h);
      // A holder seen for the first time is new if it says so, or if it
      // appeared while the page was watching.
      h.joinedAt = firstLoadOfFile ? now - d.registered_at * 1000 : now;
      h.complete = d.complete;
    }
    if (h.goneAt) { h.goneAt = 0; h.joinedAt = now; }
    if (d.complete && !h.complete) h.finishedAt = now;
    h.complete = d.complete;
    const pct = count === 0 ? 100 : Math.floor((100 * d.chunks) / count);
    h.parts.progress.textContent = d.chunks + " / " + count + " chunks · " + pct + " %";
    h.parts.speed.textContent = d.complete ? "" :
      d.chunks_per_s.toFixed(1) + " chunks/s (" + bytes(Math.round(d.chunks_per_s * f.chunk_size)) + "/s)";
    drawGrid(h.parts.grid, cellStates(d.have, count, per), per);
  }
  for (const [ep, h] of holders) {
    if (!present.has(ep)) {
      if (detail.truncated) { h.row.remove(); holders.delete(ep); continue; }
      if (!h.goneAt) h.goneAt = now;
      else if (now - h.goneAt > MARK_MS) { h.row.remove(); holders.delete(ep); continue; }
    }
  }
  // Rows in the tracker's order, the ones that left where they were.
  const box = $("holders");
  const order = [...holders.values()].map((h) => h.row);
  order.forEach((row, i) => { if (box.children[i] !== row) box.insertBefore(row, box.children[i] || null); });
  for (const h of holders.values()) mark(h, now);
  const more = $("holders-more");
  more.hidden = !detail.truncated;
  more.textContent = detail.truncated ? "showing " + detail.holders.length + " of " + f.sources + " sources" : "";
  firstLoadOfFile = false;
}

function fileGone() {
  const now = Date.now();
  for (const h of holders.values()) { if (!h.goneAt) h.goneAt = now; mark(h, now); }
  $("chosen-facts").textContent = "no longer on the tracker";
}

let timer = null;
async function poll() {
  clearTimeout(timer);
  try {
    const list = await getJson("/api/files");
    if (!chosen && list.files.length === 1) chosen = list.files[0].name;
    drawFiles(list);
    $("chosen").hidden = !chosen;
    $("pick").hidden = Boolean(chosen) || list.files.length === 0;
    if (chosen) {
      // A click during the fetch changes `chosen`: an answer about the file
      // chosen before is dropped, or its holders would be drawn under the new one.
      const asked = chosen;
      const detail = await getJson("/api/files/" + encodeURIComponent(asked));
      if (asked === chosen) {
        if (detail) drawHolders(detail); else { $("chosen-name").textContent = asked; fileGone(); }
      }
    }
    setStatus("live · " + plural(list.files.length, "file") + " · updated " +
      new Date().toLocaleTimeString(), "ok");
  } catch (e) {
    setStatus("cannot reach the tracker (" + e.message + "); retrying", "error");
  }
  timer = setTimeout(poll, POLL_MS);
}

poll();
