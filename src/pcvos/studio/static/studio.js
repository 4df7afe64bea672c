// pcvos studio page: frame view, mask tools, propagation and export through the local API.
// Labels travel as raw bytes (H*W uint8): the page edits exactly what the server stores.
"use strict";

const $ = (id) => document.getElementById(id);
const PREFETCH_IMAGES = 3;      // frames either side whose images are fetched ahead
const PREFETCH_LABELS = 2;      // frames either side whose labels are fetched ahead
const LABEL_CACHE_SIZE = 64;    // label maps kept in the page (H*W bytes each)
const UNDO_DEPTH = 50;
const PLAY_FPS_FALLBACK = 24;
const SUGGEST_K = 3;            // frames marked for review after a propagation
const CLICK_DOT = 4;            // radius of a click's dot, in image pixels at 854 wide (scaled with the frame)
const PREPARE_DELAY_MS = 150;   // a frame shown this long with the click tool has its saliency computed ahead

const S = {
  T: 0, W: 0, H: 0, fps: null, objects: [], keyframes: new Set(), propagated: new Set(),
  t: 0, labels: null, selected: null, tool: "brush", brush: 8, opacity: 0.5, outline: false, hidden: false,
  undo: [], redo: [], job: { state: "idle" }, playing: false, lastSwitchMs: null, ready: false, shown: null, pendingSaves: 0,
  version: null, message: null, suggested: [], pendingPrompts: 0,
};
// Names this page in the changes it makes: the server's "changed" events say who made each one.
const CLIENT = Math.random().toString(36).slice(2) + Date.now().toString(36);
const labelCache = new Map();   // t -> Uint8Array | null (no mask)
let lut = new Uint32Array(256); // label -> RGBA (little-endian ABGR) for the overlay
let saveChain = Promise.resolve();
let promptChain = Promise.resolve();  // model requests run one after another, in click order
let switchToken = 0;
// The click tool's clicks for one object on one frame: each click re-runs the model with all of them.
let clicks = null;
let prepareTimer = null;

// ---------------------------------------------------------------- API
// The server refuses state-changing requests without this page's token (other pages cannot read it).
const TOKEN = document.querySelector('meta[name="pcvos-token"]').content;
async function api(method, path, body, type) {
  const init = { method, headers: { "X-PCVOS-Token": TOKEN, "X-PCVOS-Client": CLIENT } };
  if (body !== undefined) {
    if (type) { init.body = body; init.headers["Content-Type"] = type; }
    else { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  }
  const res = await fetch(path, init);
  if (!res.ok) {
    let msg = res.statusText;
    try { msg = (await res.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return res;
}
// A message stays only while it is true: validWhile() (default: same frame, job and objects as when
// it was said) is checked whenever the view changes, and a false one is cleared.
function context() { return `${S.t}|${S.job.id}|${S.job.state}|${S.objects.length}`; }
function say(text, isError, validWhile) {
  const m = $("message");
  m.textContent = text || "";
  m.className = isError ? "error" : "";
  const said = context();
  S.message = text ? { text, validWhile: validWhile || (() => context() === said) } : null;
}
function refreshMessage() {
  if (S.message && !S.message.validWhile()) say("");
}
const fail = (e) => say(e.message || String(e), true);

async function fetchLabels(t) {
  if (labelCache.has(t)) return labelCache.get(t);
  const res = await api("GET", `/api/frames/${t}/labels`);
  const labels = res.status === 204 ? null : new Uint8Array(await res.arrayBuffer());
  cacheLabels(t, labels);
  return labels;
}
function cacheLabels(t, labels) {
  labelCache.delete(t);
  labelCache.set(t, labels);
  while (labelCache.size > LABEL_CACHE_SIZE) labelCache.delete(labelCache.keys().next().value);
}
const imageUrl = (t) => `/api/frames/${t}/image`;

// ---------------------------------------------------------------- state
async function loadState() {
  const st = await (await api("GET", "/api/state")).json();
  S.T = st.num_frames; S.W = st.width; S.H = st.height; S.fps = st.fps;
  S.objects = st.objects;
  S.keyframes = new Set(st.keyframes); S.propagated = new Set(st.propagated);
  S.job = st.job;
  S.version = st.version;
  if (!S.objects.some((o) => o.id === S.selected)) S.selected = S.objects.length ? S.objects[0].id : null;
  $("source").textContent = st.source;
  // the page numbers frames 1..N (the API and the files count from 0)
  $("frame-count").textContent = S.T;
  $("frame-number").min = 1;
  $("frame-number").max = S.T;
  buildLut();
  renderObjects();
  renderJob();
  renderFrameInfo();
  drawTimeline();
}
function buildLut() {
  lut = new Uint32Array(256);
  for (const o of S.objects) {
    const [r, g, b] = o.colour;
    lut[o.id] = (255 << 24) | (b << 16) | (g << 8) | r;
  }
}

// ---------------------------------------------------------------- view
function layout() {
  const stage = $("stage").getBoundingClientRect();
  if (!S.W || !stage.width) return;
  const scale = Math.min(stage.width / S.W, stage.height / S.H);
  const w = Math.floor(S.W * scale), h = Math.floor(S.H * scale);
  const left = Math.floor((stage.width - w) / 2), top = Math.floor((stage.height - h) / 2);
  for (const el of [$("frame"), $("overlay"), $("draft")]) {
    Object.assign(el.style, { width: `${w}px`, height: `${h}px`, left: `${left}px`, top: `${top}px` });
  }
  drawTimeline();
}

function renderOverlay() {
  const canvas = $("overlay");
  if (canvas.width !== S.W || canvas.height !== S.H) { canvas.width = S.W; canvas.height = S.H; }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, S.W, S.H);
  if (!S.labels || S.hidden) return;
  const img = ctx.createImageData(S.W, S.H);
  const out = new Uint32Array(img.data.buffer);
  const L = S.labels, W = S.W, H = S.H;
  const fill = Math.round(S.opacity * 255) << 24;
  for (let y = 0, i = 0; y < H; y++) {
    for (let x = 0; x < W; x++, i++) {
      const l = L[i];
      if (l === 0) continue;
      const edge = (x > 0 && L[i - 1] !== l) || (x < W - 1 && L[i + 1] !== l)
        || (y > 0 && L[i - W] !== l) || (y < H - 1 && L[i + W] !== l);
      if (edge) out[i] = lut[l];
      else if (!S.outline) out[i] = (lut[l] & 0x00ffffff) | fill;
    }
  }
  ctx.putImageData(img, 0, 0);
}

function renderFrameInfo() {
  $("frame-number").value = S.t + 1;
  const badge = $("frame-kind");
  const kind = S.keyframes.has(S.t) ? "keyframe" : S.propagated.has(S.t) ? "propagated" : "empty";
  badge.textContent = kind;
  badge.className = `badge ${kind}`;
  refreshMessage();
}

async function goTo(t, { keepEdits = false } = {}) {
  if (!S.T) return;
  t = Math.max(0, Math.min(S.T - 1, t | 0));
  const started = performance.now();
  const token = ++switchToken;
  if (t !== S.t && !keepEdits) { S.undo = []; S.redo = []; }
  if (t !== S.t) resetClicks();
  S.t = t;
  S.shown = null;
  renderFrameInfo();
  drawTimeline();
  const img = $("frame");
  img.src = imageUrl(t);
  try {
    const [labels] = await Promise.all([fetchLabels(t), img.decode()]);
    if (token !== switchToken) return;
    S.labels = labels ? labels.slice() : null;
    renderOverlay();
    S.shown = t;  // the frame and its masks are on screen
    S.lastSwitchMs = performance.now() - started;
    prefetch(t);
    prepareFrame();
  } catch (e) {
    if (token === switchToken) fail(e);
  }
}

function prefetch(t) {
  for (let d = 1; d <= PREFETCH_IMAGES; d++) {
    for (const u of [t + d, t - d]) if (u >= 0 && u < S.T) new Image().src = imageUrl(u);
  }
  for (let d = 1; d <= PREFETCH_LABELS; d++) {
    for (const u of [t + d, t - d]) if (u >= 0 && u < S.T && !labelCache.has(u)) fetchLabels(u).catch(() => {});
  }
}

// ---------------------------------------------------------------- timeline
function drawTimeline() {
  const c = $("timeline");
  const w = Math.max(1, Math.floor(c.clientWidth * devicePixelRatio)), h = Math.floor(c.clientHeight * devicePixelRatio);
  if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
  const ctx = c.getContext("2d");
  ctx.fillStyle = "#3b3f47";
  ctx.fillRect(0, 0, w, h);
  if (!S.T) return;
  const fw = w / S.T;
  const mark = (set, colour, y0, y1) => {
    ctx.fillStyle = colour;
    for (const t of set) ctx.fillRect(Math.floor(t * fw), y0, Math.max(1, Math.ceil(fw)), y1 - y0);
  };
  mark(S.propagated, "#3f9d65", h * 0.25, h * 0.75);
  mark(S.keyframes, "#f5c518", 0, h);
  mark(S.suggested, "#ff5a5f", 0, h * 0.4);  // to review: where the model is most likely wrong
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(Math.floor((S.t + 0.5) * fw) - 1, 0, 2, h);
}
function timelineFrame(ev) {
  const r = $("timeline").getBoundingClientRect();
  return Math.floor(((ev.clientX - r.left) / r.width) * S.T);
}

// ---------------------------------------------------------------- objects
function renderObjects() {
  const ul = $("objects");
  ul.innerHTML = "";
  S.objects.forEach((o, i) => {
    const li = document.createElement("li");
    li.dataset.id = o.id;
    if (o.id === S.selected) li.classList.add("selected");
    const key = document.createElement("span");
    key.className = "key";
    key.textContent = i < 9 ? String(i + 1) : "";
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = `rgb(${o.colour.join(",")})`;
    const name = document.createElement("input");
    name.type = "text";
    name.value = o.name;
    name.addEventListener("change", () => api("PATCH", `/api/objects/${o.id}`, { name: name.value })
      .then(loadState).catch(fail));
    const rm = document.createElement("button");
    rm.textContent = "×";
    rm.title = "remove this object from every frame (click twice)";
    rm.addEventListener("click", (ev) => {
      ev.stopPropagation();
      if (rm.dataset.armed) {
        api("DELETE", `/api/objects/${o.id}`).then(async () => {
          labelCache.clear();
          await loadState();
          await goTo(S.t);
        }).catch(fail);
      } else {
        rm.dataset.armed = "1";
        rm.textContent = "sure?";
        setTimeout(() => { delete rm.dataset.armed; rm.textContent = "×"; }, 3000);
      }
    });
    li.append(key, sw, name, rm);
    li.addEventListener("click", () => selectObject(o.id));
    ul.append(li);
  });
  renderControls();
}
// Drawing tools, import and undo need an object; propagation needs a keyframe; nothing edits during a job.
function renderControls() {
  const none = S.objects.length === 0, running = S.job.state === "running";
  const hint = none ? "add an object first" : running ? "a job is running" : "";
  for (const b of document.querySelectorAll("[data-tool]")) {
    b.disabled = none || running;
    b.dataset.hint = hint;
  }
  for (const id of ["undo", "redo", "import", "only-selected", "auto"]) $(id).disabled = none || running;
  $("next-review").disabled = S.suggested.length === 0;
  $("next-review").title = S.suggested.length ? `next frame to review (N): ${S.suggested.map((t) => t + 1).join(", ")}`
    : "frames to review are marked after a propagation";
  $("import").parentElement.classList.toggle("disabled", none || running);
  $("propagate").disabled = running || S.keyframes.size === 0;
  $("propagate").title = S.keyframes.size === 0 ? "draw a mask on a frame first" : "";
  refreshMessage();
}
function selectObject(id) {
  if (id !== S.selected) resetClicks();
  S.selected = id;
  for (const li of $("objects").children) li.classList.toggle("selected", Number(li.dataset.id) === id);
  prepareFrame();
}
async function addObject() {
  const obj = await (await api("POST", "/api/objects", {})).json();
  await loadState();
  selectObject(obj.id);
  return obj;
}

// ---------------------------------------------------------------- editing
function editable() {
  if (S.job.state === "running") {
    say("a job is running: wait for it or cancel it before editing", true, () => S.job.state === "running");
    return false;
  }
  return true;
}
function beginEdit() {
  if (!S.labels) S.labels = new Uint8Array(S.W * S.H);
  S.undo.push({ t: S.t, labels: S.labels.slice() });
  if (S.undo.length > UNDO_DEPTH) S.undo.shift();
  S.redo = [];
}
function commit() {
  const t = S.t, labels = S.labels.slice();
  cacheLabels(t, labels.slice());
  S.keyframes.add(t); S.propagated.delete(t);
  S.suggested = S.suggested.filter((u) => u !== t);  // corrected: reviewed
  renderFrameInfo(); renderControls(); drawTimeline();
  S.pendingSaves++;
  saveChain = saveChain.then(() => api("PUT", `/api/frames/${t}/labels`, labels, "application/octet-stream"))
    .then(() => say(`frame ${t + 1} saved as a keyframe`, false, () => S.t === t))
    .catch((e) => { fail(e); labelCache.delete(t); return loadState(); })
    .finally(() => { S.pendingSaves--; });
  return saveChain;
}
function undo() {
  const last = S.undo.pop();
  if (!last || last.t !== S.t || !editable()) return;
  resetClicks();
  S.redo.push({ t: S.t, labels: S.labels.slice() });
  S.labels = last.labels;
  renderOverlay(); commit();
}
function redo() {
  const next = S.redo.pop();
  if (!next || next.t !== S.t || !editable()) return;
  resetClicks();
  S.undo.push({ t: S.t, labels: S.labels.slice() });
  S.labels = next.labels;
  renderOverlay(); commit();
}

// A stroke or polygon is drawn on a hidden canvas, then its covered pixels (alpha >= 128) are applied.
const scratch = document.createElement("canvas");
function scratchCtx() {
  if (scratch.width !== S.W || scratch.height !== S.H) { scratch.width = S.W; scratch.height = S.H; }
  const ctx = scratch.getContext("2d", { willReadFrequently: true });
  return ctx;
}
function applyScratch(value, x0, y0, x1, y1) {
  x0 = Math.max(0, Math.floor(x0)); y0 = Math.max(0, Math.floor(y0));
  x1 = Math.min(S.W, Math.ceil(x1)); y1 = Math.min(S.H, Math.ceil(y1));
  if (x1 <= x0 || y1 <= y0) return;
  const data = scratchCtx().getImageData(x0, y0, x1 - x0, y1 - y0).data;
  const w = x1 - x0;
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      if (data[((y - y0) * w + (x - x0)) * 4 + 3] >= 128) S.labels[y * S.W + x] = value;
    }
  }
}
function paintValue() { return S.tool === "eraser" ? 0 : S.selected; }

function imagePoint(ev) {
  const r = $("draft").getBoundingClientRect();
  return [((ev.clientX - r.left) / r.width) * S.W, ((ev.clientY - r.top) / r.height) * S.H];
}

let stroke = null, polygon = [], box = null;
function draft() {
  const c = $("draft");
  if (c.width !== S.W || c.height !== S.H) { c.width = S.W; c.height = S.H; }
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, S.W, S.H);
  ctx.lineWidth = Math.max(1, S.W / 400);
  ctx.strokeStyle = "#ffffff";
  return ctx;
}
function drawPolygonDraft(hover) {
  const ctx = draft();
  if (!polygon.length) return;
  ctx.beginPath();
  ctx.moveTo(...polygon[0]);
  for (const p of polygon.slice(1)) ctx.lineTo(...p);
  if (hover) ctx.lineTo(...hover);
  ctx.stroke();
}
function drawBrushCursor(p) {
  const ctx = draft();
  ctx.beginPath();
  ctx.arc(p[0], p[1], S.brush, 0, 2 * Math.PI);
  ctx.stroke();
}

function onPointerDown(ev) {
  const right = ev.button === 2 && S.tool === "click";  // right click removes, with the click tool only
  if ((ev.button !== 0 && !right) || !S.T) return;
  if (!editable()) return;
  if (S.selected === null) { say("add an object first", true, () => S.objects.length === 0); return; }
  const p = imagePoint(ev);
  if (S.tool === "click") { addClick(p, !(right || ev.altKey)); return; }
  $("draft").setPointerCapture(ev.pointerId);
  if (S.tool === "brush" || S.tool === "eraser") {
    resetClicks();
    beginEdit();
    stroke = { last: p };
    strokeTo(p);
  } else if (S.tool === "box") {
    box = { a: p, b: p };
  }
}
function strokeTo(p) {
  const ctx = scratchCtx();
  ctx.clearRect(0, 0, S.W, S.H);
  ctx.strokeStyle = ctx.fillStyle = "#fff";
  ctx.lineCap = "round";
  ctx.lineWidth = 2 * S.brush;
  ctx.beginPath();
  ctx.moveTo(...stroke.last);
  ctx.lineTo(...p);
  ctx.stroke();
  ctx.beginPath();
  ctx.arc(p[0], p[1], S.brush, 0, 2 * Math.PI);
  ctx.fill();
  const r = S.brush + 2;
  applyScratch(paintValue(), Math.min(p[0], stroke.last[0]) - r, Math.min(p[1], stroke.last[1]) - r,
    Math.max(p[0], stroke.last[0]) + r, Math.max(p[1], stroke.last[1]) + r);
  stroke.last = p;
  renderOverlay();
}
function onPointerMove(ev) {
  if (!S.T) return;
  const p = imagePoint(ev);
  if (stroke) { strokeTo(p); drawBrushCursor(p); }
  else if (box) {
    box.b = p;
    const ctx = draft();
    ctx.strokeRect(box.a[0], box.a[1], p[0] - box.a[0], p[1] - box.a[1]);
  } else if (S.tool === "polygon") drawPolygonDraft(p);
  else if (S.tool === "brush" || S.tool === "eraser") drawBrushCursor(p);
}
function onPointerUp(ev) {
  if (stroke) { stroke = null; commit(); }
  else if (box) {
    const b = box;
    box = null;
    draft();
    boxPrompt([b.a[0], b.a[1], b.b[0], b.b[1]]);
  } else if (S.tool === "polygon" && ev.button === 0 && editable() && S.selected !== null) {
    polygon.push(imagePoint(ev));
    drawPolygonDraft();
  }
}
function closePolygon() {
  if (polygon.length >= 3) {
    resetClicks();
    beginEdit();
    const ctx = scratchCtx();
    ctx.clearRect(0, 0, S.W, S.H);
    ctx.fillStyle = "#fff";
    ctx.beginPath();
    ctx.moveTo(...polygon[0]);
    for (const p of polygon.slice(1)) ctx.lineTo(...p);
    ctx.closePath();
    ctx.fill();
    applyScratch(S.selected, 0, 0, S.W, S.H);
    renderOverlay();
    commit();
  }
  polygon = [];
  draft();
}
// ---------------------------------------------------------------- model prompts
// Click, box and auto ask the server for the selected object's mask (pcvos.mask_from_prompts), which
// then replaces that object's pixels on the frame; other objects' pixels stay as they are.
function resetClicks() {
  if (clicks === null) return;
  clicks = null;
  if (S.tool === "click") draft();
}
function drawClicks() {
  const ctx = draft();
  if (!clicks || clicks.t !== S.t) return;
  const r = Math.max(2, (CLICK_DOT * S.W) / 854);
  clicks.points.forEach((p, i) => {
    ctx.beginPath();
    ctx.arc(p[0], p[1], r, 0, 2 * Math.PI);
    ctx.fillStyle = clicks.labels[i] ? "#3fd07a" : "#ff5a5f";
    ctx.fill();
    ctx.stroke();
  });
}
function replaceObject(mask, id) {
  beginEdit();
  const L = S.labels;
  for (let i = 0; i < L.length; i++) {
    if (L[i] === id) L[i] = 0;
    if (mask[i] && L[i] === 0) L[i] = id;
  }
}
// One model request for the selected object on this frame; the answer is applied if the user is still
// there. The stored mask the server refines (previous) is the page's: earlier saves finish first.
async function runPrompt(body, what) {
  const t = S.t, id = S.selected;
  await saveChain;
  say(`${what}…`, false, () => S.t === t);
  const res = await api("POST", `/api/frames/${t}/prompt`, { object: id, ...body });
  const mask = new Uint8Array(await res.arrayBuffer());
  if (t !== S.t || id !== S.selected || !editable()) return;
  if (!mask.some((v) => v)) {
    say(`${what}: no object found; the mask is unchanged`, true, () => S.t === t);
    return;
  }
  replaceObject(mask, id);
  renderOverlay();
  if (S.tool === "click") drawClicks();
  await commit();
}
function queuePrompt(body, what, stillWanted) {
  S.pendingPrompts++;
  promptChain = promptChain.then(() => (stillWanted() ? runPrompt(body, what) : undefined)).catch(fail)
    .finally(() => { S.pendingPrompts--; });
  return promptChain;
}
// A first click on an object's empty frame runs the saliency network (most of its time); ask the
// server to run it while the user aims. Not while scrubbing (the delay), not for corrections (the
// click network needs no saliency), never while a job runs.
function prepareFrame() {
  clearTimeout(prepareTimer);
  if (S.tool !== "click" || !S.T || S.selected === null || S.job.state === "running" || S.shown !== S.t) return;
  if (S.labels && S.labels.includes(S.selected)) return;
  const t = S.t;
  prepareTimer = setTimeout(() => {
    if (t === S.t && S.tool === "click") api("POST", `/api/frames/${t}/prepare`).catch(() => {});
  }, PREPARE_DELAY_MS);
}
function addClick(p, positive) {
  if (!clicks || clicks.t !== S.t || clicks.object !== S.selected) {
    clicks = { t: S.t, object: S.selected, points: [], labels: [] };
  }
  clicks.points.push([Math.min(S.W - 1e-3, Math.max(0, p[0])), Math.min(S.H - 1e-3, Math.max(0, p[1]))]);
  clicks.labels.push(positive ? 1 : 0);
  drawClicks();
  const mine = clicks, n = mine.points.length;
  // a click made while the model is busy supersedes this one (its request holds every click)
  return queuePrompt({ points: mine.points.slice(), labels: mine.labels.slice(), previous: true },
    positive ? "adding" : "removing", () => clicks === mine && mine.points.length === n);
}
function boxPrompt(b) {
  resetClicks();
  return queuePrompt({ box: b, previous: false }, "box", () => true);
}
function autoPrompt() {
  if (!S.T || !editable()) return Promise.resolve();
  if (S.selected === null) { say("add an object first", true, () => S.objects.length === 0); return Promise.resolve(); }
  resetClicks();
  return queuePrompt({ previous: false }, "auto", () => true);
}
async function importMask(file) {
  if (!file || !editable()) return;
  const t = S.t;
  const res = await api("POST", `/api/frames/${t}/import?object=${S.selected ?? ""}`, await file.arrayBuffer(), "application/octet-stream");
  const mask = new Uint8Array(await res.arrayBuffer());
  await loadState();  // an indexed PNG may have brought new objects
  if (t !== S.t) return;
  resetClicks();
  beginEdit();
  for (let i = 0; i < mask.length; i++) if (mask[i]) S.labels[i] = mask[i];
  renderOverlay();
  await commit();
}
function setTool(tool) {
  S.tool = tool;
  polygon = []; draft();
  if (tool === "click") drawClicks();
  for (const b of document.querySelectorAll("[data-tool]")) b.classList.toggle("active", b.dataset.tool === tool);
  prepareFrame();
}
function setBrush(size) {
  S.brush = Math.max(1, Math.min(100, Math.round(size)));
  $("brush-size").value = S.brush;
  $("brush-size-value").textContent = S.brush;
}

// ---------------------------------------------------------------- jobs
function renderJob() {
  const j = S.job, running = j.state === "running";
  $("cancel").disabled = !running;
  $("export").disabled = running;
  renderControls();
  const pct = j.total ? (100 * j.done) / j.total : 0;
  $("progress-bar").style.width = `${running || j.state === "done" ? pct : 0}%`;
  let text = "";
  if (j.kind) {
    text = `${j.kind}: ${j.state}`;
    if (j.total != null) text += ` · ${j.done} / ${j.total} frames`;
    if (running && j.fps) text += ` · ${j.fps.toFixed(1)} frames/s`;
    if (running && j.eta_s != null) text += ` · ${Math.ceil(j.eta_s)} s left`;
    if (j.error) text += ` · ${j.error}`;
  }
  $("progress-text").textContent = text;
  $("download").hidden = !(j.kind === "export" && j.state === "done");
}
// Where a run from frame t starts: t itself if it is a keyframe, else the nearest keyframe on the side
// the run comes from (before t going forward, after it going backward; either side for both ways).
function startFrame(t, direction) {
  if (S.keyframes.has(t)) return t;
  const keys = [...S.keyframes];
  const before = keys.filter((k) => k < t), after = keys.filter((k) => k > t);
  const prev = before.length ? Math.max(...before) : null, next = after.length ? Math.min(...after) : null;
  if (direction === "forward" && prev !== null) return prev;
  if (direction === "backward" && next !== null) return next;
  if (prev === null) return next;
  if (next === null) return prev;
  return t - prev <= next - t ? prev : next;
}
async function propagate() {
  await saveChain;
  const direction = $("direction").value;
  const start = startFrame(S.t, direction);
  if (start === null) { say("draw a mask on a frame first, then propagate from it", true, () => S.keyframes.size === 0); return; }
  const body = { frame: start, direction, until: $("until").value,
    objects: $("only-selected").checked && S.selected !== null ? [S.selected] : null };
  S.job = await (await api("POST", "/api/propagate", body)).json();
  if (start !== S.t) {
    const id = S.job.id;
    say(`frame ${S.t + 1} is not a keyframe: propagating from keyframe ${start + 1}, the nearest`, false,
      () => S.job.id === id && S.job.state === "running");
  }
  renderJob();
}
// Where to correct: the session's most likely wrong frames, marked on the timeline, N goes to the next.
async function loadSuggestions() {
  const r = await (await api("GET", `/api/suggest?k=${SUGGEST_K}`)).json();
  S.suggested = r.frames.filter((t) => !S.keyframes.has(t));
  renderControls();
  drawTimeline();
}
function nextReview() {
  if (!S.suggested.length) {
    say("no frames to review yet: propagate first", false, () => S.suggested.length === 0);
    return;
  }
  const order = [...S.suggested].sort((a, b) => a - b);
  const next = order.find((t) => t > S.t) ?? order[0];
  goTo(next);
  say(`frame ${next + 1}: marked for review (${order.indexOf(next) + 1} of ${order.length})`, false, () => S.t === next);
}
// Another page or a script changed objects or labels: reload what this page shows of them.
async function onChanged(e) {
  if (e.version <= S.version) return;
  if (e.by === CLIENT) { S.version = e.version; return; }  // this page's own change: already shown
  await loadState();
  if (e.frames === null) labelCache.clear();
  else for (const t of e.frames) labelCache.delete(t);
  if ((e.frames === null || e.frames.includes(S.t)) && !stroke && S.pendingSaves === 0) {
    S.undo = []; S.redo = [];  // the edits they undo were made on labels that changed under them
    resetClicks();
    await goTo(S.t, { keepEdits: true });
  }
}
async function onEvent(ev) {
  const e = JSON.parse(ev.data);
  if (e.type === "changed") { await onChanged(e); return; }
  if (e.type === "hello" && S.version !== null && S.ready) {  // (re)connected: changes may have been missed
    const st = await (await api("GET", "/api/state")).json();
    if (st.version !== S.version) { await loadState(); labelCache.clear(); await goTo(S.t, { keepEdits: true }); }
  }
  S.job = e;
  if (e.type === "progress" && e.kind === "propagation" && e.frame != null) {
    if (!S.keyframes.has(e.frame)) S.propagated.add(e.frame);
    labelCache.delete(e.frame);
    if (e.frame === S.t && !stroke) goTo(S.t, { keepEdits: true });  // masks appear live
    drawTimeline();
  }
  if (e.type === "job" && e.state !== "running") {
    await loadState();
    labelCache.clear();
    if (e.kind === "propagation") { goTo(S.t, { keepEdits: true }); loadSuggestions().catch(fail); }
    const id = e.id;
    say(`${e.kind} ${e.state}${e.error ? `: ${e.error}` : ""}`, e.state === "error",
      () => S.job.id === id && S.job.state !== "running");
  }
  renderJob();
}

// ---------------------------------------------------------------- play
async function play() {
  S.playing = !S.playing;
  $("play").textContent = S.playing ? "❚❚" : "▶";
  const period = 1000 / (S.fps || PLAY_FPS_FALLBACK);
  while (S.playing) {
    const t0 = performance.now();
    if (S.t >= S.T - 1) break;
    await goTo(S.t + 1);
    await new Promise((r) => setTimeout(r, Math.max(0, period - (performance.now() - t0))));
  }
  S.playing = false;
  $("play").textContent = "▶";
}

// ---------------------------------------------------------------- keys and wiring
function onKey(ev) {
  const typing = ev.target instanceof HTMLInputElement && ["text", "number"].includes(ev.target.type);
  if (typing && ev.key !== "Escape") return;
  const k = ev.key, ctrl = ev.ctrlKey || ev.metaKey;
  let handled = true;
  if (k === "ArrowRight") goTo(S.t + (ev.shiftKey ? 10 : 1));
  else if (k === "ArrowLeft") goTo(S.t - (ev.shiftKey ? 10 : 1));
  else if (k === "Home") goTo(0);
  else if (k === "End") goTo(S.T - 1);
  else if (k === " ") play();
  else if (ctrl && (k === "z" || k === "Z")) (ev.shiftKey ? redo : undo)();
  else if (ctrl && (k === "y" || k === "Y")) redo();
  else if (ctrl) handled = false;
  else if (k >= "1" && k <= "9") { const o = S.objects[Number(k) - 1]; if (o) selectObject(o.id); }
  else if (k === "[") setBrush(S.brush - Math.max(1, S.brush * 0.15));
  else if (k === "]") setBrush(S.brush + Math.max(1, S.brush * 0.15));
  else if (k === "b" || k === "B") setTool("brush");
  else if (k === "e" || k === "E") setTool("eraser");
  else if (k === "p" || k === "P") setTool("polygon");
  else if (k === "g" || k === "G") setTool("box");
  else if (k === "c" || k === "C") setTool("click");
  else if (k === "a" || k === "A") autoPrompt();
  else if (k === "n" || k === "N") nextReview();
  else if (k === "h" || k === "H") { $("hide").checked = !$("hide").checked; S.hidden = $("hide").checked; renderOverlay(); }
  else if (k === "Enter" && S.tool === "polygon") closePolygon();
  else if (k === "Escape") { polygon = []; box = null; resetClicks(); draft(); }
  else handled = false;
  if (handled) ev.preventDefault();
}

function wire() {
  const d = $("draft");
  d.addEventListener("pointerdown", onPointerDown);
  d.addEventListener("pointermove", onPointerMove);
  d.addEventListener("pointerup", onPointerUp);
  d.addEventListener("contextmenu", (ev) => ev.preventDefault());  // right click is the click tool's "remove"
  d.addEventListener("dblclick", () => { if (S.tool === "polygon") { polygon.pop(); closePolygon(); } });
  d.addEventListener("wheel", (ev) => { ev.preventDefault(); setBrush(S.brush * (ev.deltaY < 0 ? 1.15 : 1 / 1.15)); },
    { passive: false });
  window.addEventListener("keydown", onKey);
  window.addEventListener("resize", layout);
  let dragging = false;
  const tl = $("timeline");
  tl.addEventListener("pointerdown", (ev) => { dragging = true; tl.setPointerCapture(ev.pointerId); goTo(timelineFrame(ev)); });
  tl.addEventListener("pointermove", (ev) => { if (dragging) goTo(timelineFrame(ev)); });
  tl.addEventListener("pointerup", () => { dragging = false; });
  $("frame-number").addEventListener("change", (ev) => goTo(Number(ev.target.value) - 1));
  // Enter jumps and hands the keys back to the page (arrows, tools, undo)
  $("frame-number").addEventListener("keydown", (ev) => { if (ev.key === "Enter") ev.target.blur(); });
  $("play").addEventListener("click", play);
  $("add-object").addEventListener("click", () => addObject().catch(fail));
  for (const b of document.querySelectorAll("[data-tool]")) b.addEventListener("click", () => setTool(b.dataset.tool));
  $("brush-size").addEventListener("input", (ev) => setBrush(Number(ev.target.value)));
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("import").addEventListener("change", (ev) => { importMask(ev.target.files[0]).catch(fail); ev.target.value = ""; });
  $("opacity").addEventListener("input", (ev) => { S.opacity = Number(ev.target.value) / 100; renderOverlay(); });
  $("outline").addEventListener("change", (ev) => { S.outline = ev.target.checked; renderOverlay(); });
  $("hide").addEventListener("change", (ev) => { S.hidden = ev.target.checked; renderOverlay(); });
  $("propagate").addEventListener("click", () => propagate().catch(fail));
  $("cancel").addEventListener("click", () => api("POST", "/api/cancel").catch(fail));
  $("auto").addEventListener("click", () => autoPrompt());
  $("next-review").addEventListener("click", nextReview);
  $("export").addEventListener("click", () => {
    const formats = ["coco", "yolo"].filter((f) => $(`export-${f}`).checked);
    api("POST", "/api/export", { formats }).then(async (r) => { S.job = await r.json(); renderJob(); }).catch(fail);
  });
  new EventSource("/api/events").onmessage = (ev) => onEvent(ev).catch(fail);
}

async function main() {
  wire();
  setTool("brush");
  setBrush(S.brush);
  await loadState();
  layout();
  await goTo(0);
  await loadSuggestions();
  S.ready = true;
  if (S.objects.length === 0) say("ready: add an object, draw its mask on any frame, then propagate", false, () => S.objects.length === 0);
  else say("ready: pick an object and draw on any frame, then propagate", false, () => S.keyframes.size === 0);
}
window.studio = { S, goTo, addObject, selectObject, setTool, setBrush, closePolygon, nextReview };
main().catch(fail);
