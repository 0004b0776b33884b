// The operators' console (contract section 9): plain JavaScript, no build; the charts
// are drawn by uPlot (vendored) through charts.js.
//
// It reads the agent's API relative to its own address (/ui/ -> ../), so it also works
// behind a proxy that serves the agent under a prefix. With an API key configured, every
// call carries X-API-Key, the event stream included: EventSource cannot send headers, so
// the stream is read with fetch() and parsed here (SSE wire format), and reconnects with
// Last-Event-ID itself.
"use strict";

const API = new URL("../", location.href);
const KEY_STORE = "bdi-api-key";
const MAX_VERDICTS = 50; // the agent keeps as many pictures (recent_max, default)
const TREND_POINTS = 50;
const SPARK_POINTS = 20;
const HEALTH_POLL_MS = 10000;
const STATS_POLL_MS = 3000;

const state = {
  key: sessionStorage.getItem(KEY_STORE) || "",
  rois: new Map(), // "recipe|role|roi" -> {ids, state, scores: [{seq, score, threshold, is_anomaly}]}
  verdicts: [], // newest first: verdict bodies
  pictures: new Map(), // seq -> {image, heatmap}: promises of a PNG blob (null: none)
  alerts: new Map(), // roi key -> active alert body
  selectedRoi: null,
  shownSeq: null,
  stream: null, // AbortController of the open stream
  lastEventId: null,
  boot: null, // the agent run the shown seqs belong to
  started: false,
  recalibrating: false,
};

const $ = (id) => document.getElementById(id);
const roiKey = (b) => `${b.recipe_id || "default"}|${b.role_id}|${b.roi_id}`;
const fmt = (x, digits = 4) => (x === null || x === undefined ? "—" : Number(x).toFixed(digits));
const time = (ts) => (ts ? new Date(ts).toLocaleTimeString() : "");

class Unauthorized extends Error {}

// "20261122T101530123Z-3f2a9c1b" (when the memory was fitted) -> "2026-11-22 10:15 UTC".
function modelDate(version) {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})/.exec(String(version));
  return m ? `${m[1]}-${m[2]}-${m[3]} ${m[4]}:${m[5]} UTC` : String(version).slice(0, 20);
}

// -- the API -------------------------------------------------------------------------------

function headers(extra = {}) {
  return state.key ? { ...extra, "X-API-Key": state.key } : extra;
}

async function api(path, { allowStatus = [] } = {}) {
  const response = await fetch(new URL(path, API), { headers: headers(), cache: "no-store" });
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok && !allowStatus.includes(response.status)) {
    throw new Error(`${path}: HTTP ${response.status}`);
  }
  return response;
}

// -- the key -------------------------------------------------------------------------------

function askForKey(wrong) {
  stopStream();
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").hidden = !wrong;
  $("login-error").textContent = wrong ? "That key was refused. Try again." : "";
  $("key").focus();
}

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = $("key").value.trim();
  sessionStorage.setItem(KEY_STORE, state.key);
  start();
});

$("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORE);
  state.key = "";
  $("key").value = "";
  askForKey(false);
});

// -- start, snapshot -----------------------------------------------------------------------

async function start() {
  refreshHealth(); // public: shown even while the key is asked for
  try {
    await refreshRois(); // also tells whether a key is needed
  } catch (e) {
    if (e instanceof Unauthorized) return askForKey(Boolean(state.key));
    showUnreachable(e);
    setTimeout(start, 3000);
    return;
  }
  $("login").hidden = true;
  $("app").hidden = false;
  $("forget-key").hidden = !state.key;
  if (!state.started) {
    state.started = true;
    setInterval(refreshHealth, HEALTH_POLL_MS);
    setInterval(refreshStats, STATS_POLL_MS);
    $("recalibrate").addEventListener("click", recalibrate);
  }
  refreshStats();
  openStream();
}

// What the stream cannot replay: read on every (re)connect and after a "missed" event.
async function refreshSnapshot() {
  try {
    await Promise.all([refreshHealth(), refreshRois(), refreshRecent()]);
  } catch (e) {
    if (e instanceof Unauthorized) askForKey(true);
  }
}

async function refreshHealth() {
  try {
    const response = await api("health", { allowStatus: [503] });
    showHealth(await response.json());
  } catch (e) {
    if (!(e instanceof Unauthorized)) showUnreachable(e);
  }
}

async function refreshRois() {
  const body = await (await api("rois")).json();
  for (const item of body.rois) upsertRoi(item);
  renderRois();
}

async function refreshRecent() {
  const body = await (await api("recent")).json();
  for (const verdict of body.verdicts) addVerdict(verdict);
  verdictsChanged();
}

// -- health --------------------------------------------------------------------------------

const STATUS_WORDS = { ok: "online", degraded: "online (degraded)", loading: "loading", error: "degraded" };

function showHealth(h) {
  const pill = $("health");
  pill.dataset.status = h.status || "unknown";
  $("health-status").textContent = STATUS_WORDS[h.status] || h.status || "unknown";
  const parts = [h.runtime && `${h.runtime} ${h.precision || ""}`, h.device, h.weights && `weights ${h.weights}`,
    `queue ${h.queue_size ?? "—"}`, h.version && `v${h.version}`];
  $("health-detail").textContent = parts.filter(Boolean).join(" · ");
  const reason = h.reason || (h.error && h.error.message);
  $("health-reason").hidden = !reason;
  $("health-reason").textContent = reason ? `Agent ${h.status}: ${reason}` : "";
}

// The serving figures of GET /stats: MQTT state, infer p50/p95 (ms), the MQTT spool.
async function refreshStats() {
  if (document.hidden) return; // read again when the tab shows (visibilitychange)
  try {
    const s = await (await api("stats")).json();
    const $s = $("stats");
    $s.dataset.mqtt = s.mqtt;
    const p = (v) => (v === null || v === undefined ? "—" : `${fmt(v, 1)}`);
    $s.textContent = `MQTT ${s.mqtt} · infer p50 ${p(s.infer_p50_ms)} / p95 ${p(s.infer_p95_ms)} ms` +
      ` · spool ${s.spool_size}`;
  } catch (e) {
    if (e instanceof Unauthorized) askForKey(true);
  }
}

function showUnreachable(error) {
  $("health").dataset.status = "unreachable";
  $("health-status").textContent = "unreachable";
  $("health-detail").textContent = String(error.message || error);
}

// -- ROIs ----------------------------------------------------------------------------------

function roiEntry(body) {
  const key = roiKey(body);
  if (!state.rois.has(key)) {
    state.rois.set(key, {
      key,
      ids: { recipe_id: body.recipe_id || "default", role_id: body.role_id, roi_id: body.roi_id },
      state: null,
      scores: [],
    });
  }
  return state.rois.get(key);
}

function upsertRoi(body) {
  const entry = roiEntry(body);
  entry.state = { ...(entry.state || {}), ...body };
  if (state.selectedRoi === null) state.selectedRoi = entry.key;
  return entry;
}

// The ROI table, drawn at the next frame (drawSoon): rows are kept per ROI and updated in
// place, so a verdict changes a few texts and one sparkline, not the whole table.
const roiRows = new Map(); // roi key -> {row, name, sub, memory, threshold, last, trend}

function roiRow(entry) {
  const row = document.createElement("tr");
  row.dataset.roi = entry.key;
  row.innerHTML = `<td><div class="roi-name"></div><div class="roi-sub"></div></td>` +
    `<td class="memory"></td><td class="threshold"></td><td class="last-score"></td><td></td>`;
  const [first, memory, threshold, last, trend] = row.children;
  row.addEventListener("click", () => selectRoi(entry.key));
  return { row, name: first.firstChild, sub: first.lastChild, first, memory, threshold, last, trend };
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

function setClass(element, name) {
  if (element.className !== name) element.className = name;
}

function renderRois() {
  drawSoon("rois");
}

function drawRois() {
  const tbody = $("rois").querySelector("tbody");
  const entries = [...state.rois.values()].sort((a, b) => a.key.localeCompare(b.key));
  entries.forEach((entry, i) => {
    if (!roiRows.has(entry.key)) roiRows.set(entry.key, roiRow(entry));
    const r = roiRows.get(entry.key);
    const s = entry.state || {};
    const last = entry.scores[entry.scores.length - 1];
    r.row.classList.toggle("selected", entry.key === state.selectedRoi);
    r.row.classList.toggle("in-alert", state.alerts.has(entry.key));
    setText(r.name, `${entry.ids.role_id} / ${entry.ids.roi_id}`);
    setText(r.sub, `recipe ${entry.ids.recipe_id}` + (s.model_version ? ` · model ${modelDate(s.model_version)}` : ""));
    r.first.title = s.model_version ? `model_version ${s.model_version}` : "";
    setClass(r.memory, "memory " + (s.fitted ? "yes" : "no"));
    setText(r.memory, s.fitted ? `fitted · ${s.coreset_size ?? "?"}` : "not fitted");
    setClass(r.threshold, "threshold " + (s.calibrated ? "yes" : "no"));
    setText(r.threshold, s.calibrated ? fmt(s.threshold) : "uncalibrated");
    setClass(r.last, "last-score " + (last ? (last.is_anomaly ? "score-ng" : last.is_anomaly === false ? "score-ok" : "") : ""));
    setText(r.last, last ? fmt(last.score) : "—");
    const spark = sparkline(entry.key, entry.scores.slice(-SPARK_POINTS));
    if (spark.parentNode !== r.trend) r.trend.append(spark);
    if (tbody.children[i] !== r.row) tbody.insertBefore(r.row, tbody.children[i] || null);
  });
  $("rois-empty").hidden = entries.length > 0;
  setText($("roi-count"), entries.length ? `(${entries.length})` : "");
  renderDetail();
}

function selectRoi(key) {
  state.selectedRoi = key;
  renderRois();
}

// -- verdicts and their pictures -----------------------------------------------------------

function addVerdict(verdict) {
  if (state.verdicts.some((v) => v.seq === verdict.seq)) return false;
  state.verdicts.push(verdict);
  state.verdicts.sort((a, b) => b.seq - a.seq);
  for (const old of state.verdicts.splice(MAX_VERDICTS)) dropPictures(old.seq);
  const entry = roiEntry(verdict);
  entry.scores.push({ seq: verdict.seq, score: verdict.score, threshold: verdict.threshold, is_anomaly: verdict.is_anomaly });
  entry.scores.sort((a, b) => a.seq - b.seq);
  entry.scores.splice(0, Math.max(0, entry.scores.length - TREND_POINTS));
  if (state.selectedRoi === null) state.selectedRoi = entry.key;
  return true;
}

// After verdicts came in: the list, the ROI table, and the newest in the viewer when the
// viewer follows the line.
function verdictsChanged() {
  renderVerdicts();
  drawSoon("follow", "rois");
}

// -- drawing at most once a frame ----------------------------------------------------------

// What the verdicts, alerts and state events changed is drawn at the next animation frame:
// a burst of events (a reconnect's backlog) costs one drawing, and a hidden tab (no
// frames, and none asked for) draws nothing until it shows again, then catches up.
const dirty = new Set(); // "follow": the viewer to the newest verdict; "rois": table and charts
let frameAsked = false;

function drawSoon(...parts) {
  for (const part of parts) dirty.add(part);
  if (frameAsked || document.hidden) return;
  frameAsked = true;
  requestAnimationFrame(drawNow);
}

function drawNow() {
  frameAsked = false;
  if (dirty.delete("follow")) {
    const newest = state.verdicts[0];
    if (newest && $("follow").checked && newest.seq !== state.shownSeq) showVerdict(newest.seq);
  }
  if (dirty.delete("rois")) drawRois();
}

document.addEventListener("visibilitychange", () => {
  if (document.hidden) return;
  if (dirty.size) drawSoon();
  if (state.started) refreshStats();
});

function dropPictures(seq) {
  state.pictures.delete(seq);
}

// A picture of a recent verdict as a PNG blob, fetched once per verdict with fetch() (an
// img cannot send X-API-Key); null when the agent no longer has it (evicted) or never had
// it (no heatmap).
function picture(seq, kind) {
  if (!state.pictures.has(seq)) state.pictures.set(seq, {});
  const pictures = state.pictures.get(seq);
  if (!pictures[kind]) {
    pictures[kind] = fetch(new URL(`recent/${seq}/${kind}.png`, API), { headers: headers() })
      .then((response) => (response.ok ? response.blob() : null))
      .catch(() => null);
  }
  return pictures[kind];
}

// The list follows state.verdicts (newest first): a new verdict's card is put in, one
// beyond MAX_VERDICTS taken out; cards already shown stay as they are, pictures loaded.
const cards = new Map(); // seq -> li

function renderVerdicts() {
  const list = $("verdicts");
  const keep = new Set(state.verdicts.map((v) => v.seq));
  for (const [seq, item] of cards) {
    if (!keep.has(seq)) {
      item.remove();
      cards.delete(seq);
    }
  }
  state.verdicts.forEach((v, i) => {
    if (!cards.has(v.seq)) cards.set(v.seq, card(v));
    const item = cards.get(v.seq);
    if (list.children[i] !== item) list.insertBefore(item, list.children[i] || null);
  });
  markShown();
  setText($("verdict-count"), state.verdicts.length ? `(${state.verdicts.length})` : "");
}

function card(v) {
  const item = document.createElement("li");
  item.className = "verdict";
  item.dataset.seq = v.seq;
  const img = document.createElement("img");
  img.alt = `ROI image of verdict ${v.seq}`;
  img.decoding = "async";
  img.loading = "lazy";
  picture(v.seq, "image").then(thumbnail).then((src) => { if (src) img.src = src; });
  const what = document.createElement("div");
  what.className = "what";
  what.innerHTML = `<div class="roi-name"></div><div class="scores"></div><div class="muted small"></div>`;
  const [name, scores, when] = what.children;
  name.textContent = `${v.role_id} / ${v.roi_id}`;
  scores.textContent = `score ${fmt(v.score)} · threshold ${fmt(v.threshold)}`;
  when.textContent = `${time(v.ts)} · ${v.source || ""} · #${v.seq}`;
  item.append(img, what, badge(v));
  item.addEventListener("click", () => {
    $("follow").checked = false;
    showVerdict(v.seq);
  });
  return item;
}

// A card's picture: the ROI image (up to 512 px) made small once, its short side twice
// the card's 56 px, as a data: URL. A card with the full image cost more than everything
// else about a verdict: its decode, and scaling it down each time the list is painted
// again (every new card moves the others down).
const THUMB_PX = 112;
const thumbCanvas = document.createElement("canvas");

async function thumbnail(blob) {
  const bitmap = blob ? await decode(blob) : null;
  if (!bitmap) return null;
  const scale = Math.min(1, THUMB_PX / Math.min(bitmap.width, bitmap.height));
  thumbCanvas.width = Math.max(1, Math.round(bitmap.width * scale));
  thumbCanvas.height = Math.max(1, Math.round(bitmap.height * scale));
  const ctx = thumbCanvas.getContext("2d");
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, thumbCanvas.width, thumbCanvas.height);
  bitmap.close();
  return thumbCanvas.toDataURL("image/jpeg", 0.9);
}

// The card of the verdict in the viewer outlined, and only it.
function markShown() {
  for (const item of $("verdicts").querySelectorAll("li.shown")) {
    if (Number(item.dataset.seq) !== state.shownSeq) item.classList.remove("shown");
  }
  const item = cards.get(state.shownSeq);
  if (item) item.classList.add("shown");
}

function badge(v) {
  const span = document.createElement("span");
  const kind = v.is_anomaly === true ? "ng" : v.is_anomaly === false ? "ok" : "none";
  span.className = `badge ${kind}`;
  span.textContent = { ng: "NG", ok: "OK", none: "no threshold" }[kind];
  return span;
}

// -- the viewer: the ROI image with its heatmap over it ------------------------------------

const viewer = { seq: null, image: null, heat: null }; // image: an ImageBitmap; heat: a canvas

async function showVerdict(seq) {
  state.shownSeq = seq;
  const v = state.verdicts.find((x) => x.seq === seq);
  if (!v) return;
  markShown();
  $("viewer-title").textContent = `#${v.seq} · ${v.role_id} / ${v.roi_id}`;
  showFacts(v);
  const [image, heat] = await Promise.all([picture(seq, "image"), picture(seq, "heatmap")].map(
    (promise) => promise.then((blob) => (blob ? decode(blob) : null))));
  if (state.shownSeq !== seq) { // another verdict was chosen meanwhile
    for (const bitmap of [image, heat]) if (bitmap) bitmap.close();
    return;
  }
  if (viewer.image) viewer.image.close();
  viewer.seq = seq;
  viewer.image = image;
  viewer.heat = heat ? colourise(heat) : null;
  if (heat) heat.close();
  drawViewer();
}

// Decoded off the main thread (createImageBitmap), unlike an Image's src.
function decode(blob) {
  return createImageBitmap(blob).catch(() => null);
}

function showFacts(v) {
  const facts = [
    ["verdict", v.is_anomaly === true ? "NG" : v.is_anomaly === false ? "OK" : "no threshold"],
    ["score", fmt(v.score)], ["threshold", fmt(v.threshold)], ["regions", v.n_regions ?? "—"],
    ["largest region", v.max_area_mm2 === null || v.max_area_mm2 === undefined ? "—" : `${fmt(v.max_area_mm2, 2)} mm²`],
    ["source", v.source || "—"], ["time", time(v.ts)], ["request", v.request_id || "—"],
  ];
  $("viewer-facts").replaceChildren(...facts.map(([k, value]) => {
    const div = document.createElement("div");
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = k;
    dd.textContent = value;
    if (k === "verdict") dd.className = v.is_anomaly ? "score-ng" : v.is_anomaly === false ? "score-ok" : "";
    div.append(dt, dd);
    return div;
  }));
}

// The grayscale heatmap (128 = at the threshold) as colours whose opacity grows with the
// value: clear far below the threshold, cool and faint near it, hot and solid above it.
const RAMP = [[0, 0, 255], [0, 200, 255], [255, 224, 0], [255, 120, 0], [255, 0, 0]];

// The ramp for each of the 256 grey levels, as RGBA words: one lookup a pixel.
const HEAT_LUT = (() => {
  const bytes = new Uint8ClampedArray(256 * 4);
  for (let g = 0; g < 256; g++) {
    const t = g / 255;
    const at = t * (RAMP.length - 1);
    const lo = Math.min(Math.floor(at), RAMP.length - 2);
    const f = at - lo;
    for (let c = 0; c < 3; c++) bytes[g * 4 + c] = RAMP[lo][c] + (RAMP[lo + 1][c] - RAMP[lo][c]) * f;
    bytes[g * 4 + 3] = 255 * Math.min(1, Math.max(0, (t - 0.2) / 0.4));
  }
  return new Uint32Array(bytes.buffer);
})();

// One canvas for the shown heatmap, read back on the CPU (willReadFrequently: no GPU
// read-back), reused from verdict to verdict.
const heatCanvas = document.createElement("canvas");
const heatContext = heatCanvas.getContext("2d", { willReadFrequently: true });

function colourise(bitmap) {
  if (heatCanvas.width !== bitmap.width || heatCanvas.height !== bitmap.height) {
    heatCanvas.width = bitmap.width;
    heatCanvas.height = bitmap.height;
  }
  heatContext.clearRect(0, 0, bitmap.width, bitmap.height);
  heatContext.drawImage(bitmap, 0, 0);
  const pixels = heatContext.getImageData(0, 0, bitmap.width, bitmap.height);
  const grey = pixels.data;
  const out = new Uint32Array(grey.buffer);
  for (let i = 0, p = 0; p < out.length; i += 4, p++) out[p] = HEAT_LUT[grey[i]];
  heatContext.putImageData(pixels, 0, 0);
  return heatCanvas;
}

function drawViewer() {
  const canvas = $("view");
  const ctx = canvas.getContext("2d");
  const base = viewer.image || viewer.heat;
  $("viewer-empty").hidden = Boolean(base);
  canvas.dataset.seq = viewer.seq ?? "";
  canvas.dataset.heatmap = viewer.heat ? "yes" : "no";
  if (!base) {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    return;
  }
  const { width, height } = base;
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  ctx.globalAlpha = 1;
  ctx.clearRect(0, 0, width, height);
  if (viewer.image) ctx.drawImage(viewer.image, 0, 0, width, height);
  if (viewer.heat) {
    // The heatmap has the infer input's size, the image at most 512 px: stretched to fit.
    ctx.globalAlpha = Number($("opacity").value) / 100;
    ctx.drawImage(viewer.heat, 0, 0, width, height);
    ctx.globalAlpha = 1;
  }
}

$("opacity").addEventListener("input", drawViewer);
$("follow").addEventListener("change", () => {
  if ($("follow").checked && state.verdicts.length) showVerdict(state.verdicts[0].seq);
});

// -- alerts --------------------------------------------------------------------------------

function onAlert(alert, seq) {
  const key = roiKey(alert);
  if (alert.kind === "cleared") state.alerts.delete(key);
  else state.alerts.set(key, alert);
  const item = document.createElement("li");
  item.className = `alert ${alert.kind === "cleared" ? "cleared" : "on"}`;
  item.dataset.seq = seq;
  const roi = `${alert.role_id} / ${alert.roi_id}`;
  item.textContent = alert.kind === "cleared"
    ? `${roi}: cleared, an OK verdict ended the run`
    : `${roi}: ${alert.count} anomalous verdicts in a row`;
  const when = document.createElement("div");
  when.className = "when";
  const since = alert.since ? `since ${time(alert.since)} · ` : "";
  const request = alert.last_request_id ? ` · last request ${alert.last_request_id}` : "";
  when.textContent = `${since}recipe ${alert.recipe_id || "default"}${request}`;
  item.append(when);
  $("alerts").prepend(item);
  while ($("alerts").children.length > 30) $("alerts").lastChild.remove();
  $("alerts-empty").hidden = true;
  renderAlertBanner();
  renderRois();
}

function renderAlertBanner() {
  const active = [...state.alerts.values()];
  $("alert-banner").hidden = active.length === 0;
  $("alert-banner").textContent = active.length
    ? "ALERT · " + active.map((a) => `${a.role_id} / ${a.roi_id}: ${a.count} anomalous in a row`).join(" · ")
    : "";
}

// -- charts (charts.js) --------------------------------------------------------------------

const trendChart = new TrendChart($("trend"));
const calibrationChart = new CalibrationChart($("calibration"));

function renderDetail() {
  const entry = state.rois.get(state.selectedRoi);
  $("detail-title").textContent = entry ? `${entry.ids.role_id} / ${entry.ids.roi_id}` : "";
  drawTrend(entry);
  drawCalibration(entry);
}

function drawTrend(entry) {
  const points = entry ? entry.scores : [];
  if (!points.length) return trendChart.message(entry ? "no verdict for this ROI yet" : "select a ROI");
  trendChart.show(entry.key, points);
}

// The calibration as the agent stores it, read from the ROI's manifest: the OK and NG
// scores it was chosen from (at most 2,000 of each, thinned evenly) and its summary
// numbers, drawn by CalibrationChart (charts.js).
const manifests = new Map(); // roi key -> the ROI's /manifest body (null: none)
const calibrationsLoading = new Set();

async function loadCalibration(entry) {
  if (calibrationsLoading.has(entry.key)) return;
  calibrationsLoading.add(entry.key);
  try {
    const query = new URLSearchParams({ ...entry.ids });
    const response = await api(`manifest?${query}`, { allowStatus: [400, 404] });
    const body = await response.json();
    manifests.set(entry.key, response.ok ? body : null);
  } catch (e) {
    if (e instanceof Unauthorized) askForKey(true);
    return;
  } finally {
    calibrationsLoading.delete(entry.key);
  }
  if (entry.key === state.selectedRoi) drawCalibration(entry);
}

// The selected ROI's stored samples (from its manifest), and a button that calibrates it
// again from them: calibrate_ng with only the ROI, so the agent scores its stored OK and
// NG samples itself (leave-one-out).
function drawRoiTools(entry) {
  const m = entry ? manifests.get(entry.key) : null;
  const d = m && m.datasets;
  $("roi-datasets").textContent = d ? `stored samples: ${d.ok ?? 0} OK · ${d.ng ?? 0} NG` : "";
  $("recalibrate").disabled = !entry || !(entry.state && entry.state.fitted) || state.recalibrating;
}

async function recalibrate() {
  const entry = state.rois.get(state.selectedRoi);
  if (!entry || state.recalibrating) return;
  state.recalibrating = true;
  drawRoiTools(entry);
  const status = $("recalibrate-status");
  status.className = "muted small";
  status.textContent = "calibrating…";
  try {
    const ids = { role_id: entry.ids.role_id, roi_id: entry.ids.roi_id };
    if (entry.ids.recipe_id !== "default") ids.recipe_id = entry.ids.recipe_id;
    const response = await fetch(new URL("calibrate_ng", API), {
      method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(ids),
    });
    if (response.status === 401) throw new Unauthorized();
    const body = await response.json();
    if (!response.ok) throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
    status.textContent = `threshold ${fmt(body.threshold)} from ${body.n_ok} OK and ${body.n_ng} NG`;
  } catch (e) {
    if (e instanceof Unauthorized) return askForKey(true);
    status.className = "error small";
    status.textContent = `not calibrated: ${e.message || e}`;
  } finally {
    state.recalibrating = false;
  }
  manifests.delete(entry.key); // read again, with the new scores
  try {
    await refreshRois();
  } catch (e) {
    if (e instanceof Unauthorized) askForKey(true);
  }
}

function drawCalibration(entry) {
  const m = entry ? manifests.get(entry.key) : null;
  if (entry && m === undefined) loadCalibration(entry);
  drawRoiTools(entry);
  const calibrated = Boolean(entry && entry.state && entry.state.calibrated);
  const c = calibrated && m ? m.calibration || null : calibrated ? m : null;
  const note = $("calibration-note");
  if (!entry || !c) {
    note.textContent = "";
    const text = !entry ? "select a ROI" : c === undefined ? "loading…" : "not calibrated (POST /calibrate_ng)";
    return calibrationChart.message(text);
  }
  calibrationChart.show(c, entry.scores.map((p) => p.score));
  const ng = c.n_ng ? `NG p5 ${fmt(c.p5_ng)} – mean ${fmt(c.ng_mean)}` : "no NG scores";
  const kept = Array.isArray(c.ok_scores) ? "" : " This calibration predates stored scores: the bands span its summary numbers.";
  note.textContent = `OK mean ${fmt(c.ok_mean)} – p${c.score_percentile ?? 99} ${fmt(c.p99_ok)}; ${ng}; ` +
    `threshold ${fmt(c.threshold)} (${c.method || "calibrated"}). Blue ticks on the zero line: recent verdicts.${kept}`;
}

// -- the event stream: fetch() and the SSE parser of sse.js --------------------------------

function setLive(mode, text) {
  $("live").dataset.state = mode;
  $("live-text").textContent = text;
}

function stopStream() {
  if (state.stream) state.stream.abort();
  state.stream = null;
}

async function openStream() {
  stopStream();
  const control = new AbortController();
  state.stream = control;
  let retryMs = 3000;
  while (state.stream === control) {
    try {
      const extra = { Accept: "text/event-stream" };
      if (state.lastEventId !== null) extra["Last-Event-ID"] = state.lastEventId;
      const response = await fetch(new URL("events", API), { headers: headers(extra), signal: control.signal, cache: "no-store" });
      if (response.status === 401) return askForKey(true);
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const parser = new SseParser({
        onEvent: (e) => {
          if (e.lastEventId !== null) state.lastEventId = e.lastEventId;
          onEvent(e);
        },
        onComment: (text) => {
          // The first frame: subscribed, so whatever happens from now on will come.
          if (text.startsWith("connected")) {
            const boot = (/boot (\S+),/.exec(text) || [])[1] || null;
            $("agent-id").textContent = (/, agent (\S+)$/.exec(text) || [])[1] || "";
            if (state.boot !== null && boot !== state.boot) forgetRun();
            state.boot = boot;
            setLive("live", "live");
            refreshSnapshot();
          }
        },
        onRetry: (ms) => { retryMs = ms; },
      });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value);
      }
    } catch (error) {
      if (control.signal.aborted) return;
    }
    if (state.stream !== control) return;
    setLive("reconnecting", "reconnecting…");
    await new Promise((resolve) => setTimeout(resolve, retryMs));
  }
}

// The agent restarted: its seqs begin again, so what is shown names other verdicts.
function forgetRun() {
  for (const v of state.verdicts) dropPictures(v.seq);
  state.verdicts = [];
  state.shownSeq = null;
  state.alerts.clear();
  for (const entry of state.rois.values()) entry.scores = [];
  if (viewer.image) viewer.image.close();
  Object.assign(viewer, { seq: null, image: null, heat: null });
  drawViewer();
  renderAlertBanner();
  renderVerdicts();
  renderRois();
}

function onEvent(e) {
  let body;
  try {
    body = JSON.parse(e.data);
  } catch {
    return;
  }
  if (e.type === "verdict") {
    if (addVerdict(body)) verdictsChanged();
  } else if (e.type === "alert") {
    onAlert(body, e.lastEventId);
  } else if (e.type === "state") {
    upsertRoi(body);
    manifests.delete(roiKey(body)); // read again when shown
    renderRois();
  } else if (e.type === "health") {
    showHealth(body);
  } else if (e.type === "missed") {
    refreshSnapshot(); // what the stream could not give back
  }
}

// Exposed for diagnosis from the browser's console (and the end-to-end test).
window.bdiConsole = {
  state,
  reconnect: openStream,
  disconnect() {
    stopStream();
    setLive("off", "stream off");
  },
};

start();
