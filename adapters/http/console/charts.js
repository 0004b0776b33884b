// The console's charts, drawn by uPlot (vendor/uPlot.iife.min.js, loaded before this
// file; version and licence in vendor/README.md). console.js gathers the numbers; this
// file only turns them into charts: the score trend of the selected ROI, the calibration
// histograms, and the ROI table's sparklines.
"use strict";

// The theme's colours (console.css): a canvas cannot read CSS variables by itself.
const INK = {
  text: "#e6edf3",
  muted: "#8b99a6",
  grid: "#2c3742",
  back: "#0d1117",
  ok: "#3fb950",
  ng: "#f85149",
  info: "#58a6ff",
  threshold: "#e3b341",
};
const FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif';
const AXIS_FONT = `13px ${FONT}`;
const nil = (v) => v === null || v === undefined;
const num = (v, digits = 4) => (nil(v) ? "—" : Number(v).toFixed(digits));

// Integer steps only: the trend's x axis counts verdicts.
const WHOLE_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 100000, 1000000];

function axis(extra = {}) {
  return {
    stroke: INK.muted,
    font: AXIS_FONT,
    grid: { stroke: INK.grid, width: 1 },
    ticks: { stroke: INK.grid, width: 1, size: 4 },
    ...extra,
  };
}

// No drag-to-zoom: a chart that changes under a live feed should not keep a stale zoom.
const CURSOR = { drag: { x: false, y: false, setScale: false }, points: { size: 8 } };

// A label drawn on the plot's canvas, on a dark box so it stays readable over bars and
// lines; it goes to the left of x when it would run off the plot's right edge.
function tag(u, text, x, y, colour) {
  const ctx = u.ctx;
  const px = uPlot.pxRatio;
  ctx.save();
  ctx.font = `${Math.round(13 * px)}px ${FONT}`;
  ctx.textBaseline = "middle";
  ctx.textAlign = "left"; // uPlot leaves the axes' alignment on the context
  const width = ctx.measureText(text).width;
  const pad = 3 * px;
  const right = u.bbox.left + u.bbox.width;
  const x0 = x + pad + width + pad > right ? x - pad * 2 - width : x + pad;
  ctx.fillStyle = "rgba(13, 17, 23, 0.85)";
  ctx.fillRect(x0 - pad, y - 9 * px, width + pad * 2, 18 * px);
  ctx.fillStyle = colour;
  ctx.fillText(text, x0, y);
  ctx.restore();
}

function line(u, x0, y0, x1, y1, colour, dash, width = 1.5) {
  const ctx = u.ctx;
  ctx.save();
  ctx.strokeStyle = colour;
  ctx.lineWidth = width * uPlot.pxRatio;
  ctx.setLineDash(dash.map((d) => d * uPlot.pxRatio));
  ctx.beginPath();
  ctx.moveTo(x0, y0);
  ctx.lineTo(x1, y1);
  ctx.stroke();
  ctx.restore();
}

// A chart in a holder element: a message while there is nothing to draw, else a uPlot
// as wide as the holder (followed on resize). The plot is made again only when its
// identity changes (another ROI, another calibration); otherwise new data is set, and
// nothing is done when the data's signature says they have not changed.
class ChartBox {
  constructor(holder, height) {
    this.holder = holder;
    this.height = height;
    this.plot = null;
    this.identity = undefined;
    this.signature = undefined;
    this.note = document.createElement("p");
    this.note.className = "chart-empty";
    this.host = document.createElement("div");
    holder.replaceChildren(this.note, this.host);
    new ResizeObserver(() => this.fit()).observe(holder);
  }

  width() {
    return Math.max(200, Math.floor(this.holder.clientWidth));
  }

  fit() {
    if (this.plot && this.plot.width !== this.width()) {
      this.plot.setSize({ width: this.width(), height: this.height });
    }
  }

  // Whether the plot shows already what identity and signature name.
  showing(identity, signature) {
    return this.plot !== null && !this.host.hidden && identity === this.identity && signature === this.signature;
  }

  message(text) {
    this.signature = undefined;
    this.note.textContent = text;
    this.note.hidden = false;
    this.host.hidden = true;
    this.holder.dataset.chart = "empty";
  }

  draw(identity, options, data, signature) {
    this.signature = signature;
    this.note.hidden = true;
    this.host.hidden = false;
    if (this.plot && identity === this.identity) {
      this.plot.setData(data);
    } else {
      if (this.plot) this.plot.destroy();
      this.identity = identity;
      this.plot = new uPlot({ ...options, width: this.width(), height: this.height }, data, this.host);
    }
    this.holder.dataset.chart = "drawn";
  }
}

// -- the score trend ------------------------------------------------------------------------

// The selected ROI's recent verdict scores (a line, OK dots green, NG dots red) against
// the threshold each was judged by (dashed, in steps where it changed), over the
// verdicts' sequence numbers. A new calibration shows from the next verdict on, so a
// verdict never looks judged by a threshold it did not meet.
class TrendChart {
  constructor(holder) {
    this.box = new ChartBox(holder, 180);
    this.model = { points: [], threshold: null };
  }

  message(text) {
    this.box.message(text);
  }

  show(key, points) {
    const last = points.at(-1);
    const signature = `${points.length}|${points[0].seq}|${last.seq}|${last.score}|${last.threshold}`;
    if (this.box.showing(key, signature)) return;
    const lastJudged = points.filter((p) => !nil(p.threshold)).at(-1);
    this.model = { points, threshold: lastJudged ? lastJudged.threshold : null };
    const seqs = points.map((p) => p.seq);
    const scores = points.map((p) => p.score);
    const only = (verdict) => points.map((p) => (p.is_anomaly === verdict ? p.score : null));
    const thr = points.map((p) => (nil(p.threshold) ? null : p.threshold));
    this.box.draw(key, this.options(), [seqs, scores, only(false), only(true), thr], signature);
  }

  options() {
    const m = () => this.model;
    const dots = (colour) => ({ show: true, size: 8, space: 0, fill: colour, stroke: colour });
    // Not hovered: the summary (last score, how many OK and NG); hovered: that verdict.
    const count = (verdict) => (u, v, si, i) =>
      i === null ? `${m().points.filter((p) => p.is_anomaly === verdict).length}` : num(v);
    return {
      class: "trend-plot",
      legend: { live: true },
      cursor: CURSOR,
      scales: {
        // Half a verdict's width either side, so the first and last dots are whole (from
        // the model: uPlot widens a single point's range before it asks).
        x: { time: false, range: () => seqRange(m().points.map((p) => p.seq)) },
        y: { range: (u, lo, hi) => [0, (hi ?? 0) * 1.15 || 1] },
      },
      axes: [
        axis({ incrs: WHOLE_STEPS, space: 48, values: (u, ticks) => ticks.map((t) => `#${t}`) }),
        axis({ size: 56, values: (u, ticks) => ticks.map((t) => t.toFixed(3)) }),
      ],
      series: [
        { label: "verdict", value: (u, v) => (nil(v) ? `last ${m().points.length}` : `#${v}`) },
        {
          label: "score",
          stroke: INK.info,
          width: 2,
          points: { show: true, size: 6, space: 0, fill: INK.muted, stroke: INK.muted },
          value: (u, v, si, i) => num(i === null ? (m().points.at(-1) || {}).score : v),
        },
        { label: "OK", stroke: INK.ok, paths: () => null, points: dots(INK.ok), value: count(false) },
        { label: "NG", stroke: INK.ng, paths: () => null, points: dots(INK.ng), value: count(true) },
        {
          label: "threshold",
          stroke: INK.threshold,
          width: 1.5,
          dash: [6, 4],
          paths: uPlot.paths.stepped({ align: 1 }),
          points: { show: false },
          value: (u, v, si, i) => num(i === null ? m().threshold : v),
        },
      ],
      hooks: {
        // The last verdict's threshold named above its line, where the line ends.
        draw: [
          (u) => {
            const thr = m().threshold;
            if (nil(thr)) return;
            const x = u.valToPos(m().points.at(-1).seq, "x", true);
            const y = u.valToPos(thr, "y", true);
            tag(u, `threshold ${num(thr)}`, x, y - 12 * uPlot.pxRatio, INK.threshold);
          },
        ],
      },
    };
  }
}

// -- the calibration ------------------------------------------------------------------------

const BINS = 40;
const LABEL_ROWS = 3; // threshold, p99 OK, p5 NG
const ROW_PX = 19;

// The calibration as the agent stores it: the OK and NG scores it was chosen from, as two
// histograms on one score axis, OK above the zero line and NG below, each scaled to its
// own tallest bin so a few NG scores stay visible next to many OK; vertical lines at the
// threshold, the OK scores' p99 (score_percentile) and the NG scores' p5; blue ticks on
// the zero line for the ROI's recent verdict scores. A calibration stored before the
// scores were kept shows bands over its summary numbers instead of histograms.
class CalibrationChart {
  constructor(holder) {
    this.box = new ChartBox(holder, 230);
    this.model = null;
  }

  message(text) {
    this.box.message(text);
  }

  show(calibration, recent) {
    const c = calibration;
    const signature = recent.join(",");
    if (this.box.showing(c, signature)) return;
    const okScores = Array.isArray(c.ok_scores) ? c.ok_scores : null;
    const ngScores = Array.isArray(c.ng_scores) ? c.ng_scores : [];
    const values = [c.threshold, c.ok_mean, c.p99_ok, c.p5_ng, c.ng_mean, ...recent, ...(okScores || []), ...ngScores]
      .filter((v) => !nil(v));
    const top = values.reduce((a, b) => Math.max(a, b), 0) * 1.1 || 1;
    const centres = Array.from({ length: BINS }, (_, i) => ((i + 0.5) * top) / BINS);
    const okCounts = counts(okScores || [], top);
    const ngCounts = counts(ngScores, top);
    this.model = { c, top, recent, okCounts, ngCounts, histograms: Boolean(okScores) };
    const share = (bins, sign) => {
      const most = Math.max(1, ...bins);
      return bins.map((n) => (n ? (sign * n) / most : null));
    };
    this.box.draw(c, this.options(), [centres, share(okCounts, 1), share(ngCounts, -1), nulls(), nulls(), nulls()], signature);
  }

  options() {
    const m = () => this.model;
    const c = m().c;
    const pct = c.score_percentile ?? 99;
    const bars = uPlot.paths.bars({ size: [0.92, Infinity], align: 0 });
    const n = (bins) => bins.reduce((a, b) => a + b, 0);
    // Not hovered: how many scores; hovered: how many in that bin.
    const tally = (which, stored) => (u, v, si, i) =>
      i === null ? `${stored()}` : `${m()[which][i]}`;
    const marker = (label, colour, dash, value) => ({
      label, stroke: colour, width: 1.5, dash, paths: () => null, points: { show: false }, value: () => num(value()),
    });
    return {
      class: "calibration-plot",
      legend: { live: true },
      cursor: { ...CURSOR, y: false },
      // The markers' labels get a strip of their own above the bars (three rows).
      padding: [LABEL_ROWS * ROW_PX + 6, 16, null, null],
      scales: { x: { time: false, range: () => [0, m().top] }, y: { range: [-1.1, 1.1] } },
      axes: [
        axis({ values: (u, ticks) => ticks.map((t) => t.toFixed(3)) }),
        axis({
          size: 64,
          grid: { show: false },
          splits: () => [-0.6, 0.6],
          values: (u, ticks) => ticks.map((t) => (t > 0 ? `OK (${c.n_ok ?? n(m().okCounts)})` : `NG (${c.n_ng ?? n(m().ngCounts)})`)),
        }),
      ],
      series: [
        {
          label: "bin",
          value: (u, v) => {
            const half = m().top / BINS / 2;
            return nil(v) ? `0–${num(m().top, 3)}` : `${num(v - half, 3)}–${num(v + half, 3)}`;
          },
        },
        {
          label: "OK", stroke: INK.ok, fill: "rgba(63, 185, 80, 0.7)", width: 0, paths: bars, points: { show: false },
          fillTo: 0, value: tally("okCounts", () => c.n_ok ?? n(m().okCounts)),
        },
        {
          label: "NG", stroke: INK.ng, fill: "rgba(248, 81, 73, 0.75)", width: 0, paths: bars, points: { show: false },
          fillTo: 0, value: tally("ngCounts", () => c.n_ng ?? n(m().ngCounts)),
        },
        marker("threshold", INK.threshold, [6, 4], () => c.threshold),
        marker(`p${pct} OK`, INK.ok, [2, 3], () => c.p99_ok),
        marker("p5 NG", INK.ng, [2, 3], () => c.p5_ng),
      ],
      hooks: { draw: [(u) => this.decorate(u, pct)] },
    };
  }

  // What uPlot has no series for: the zero line, the bands, the recent scores, the markers.
  decorate(u, pct) {
    const { c, recent, histograms } = this.model;
    const px = uPlot.pxRatio;
    const { left, top, width, height } = u.bbox;
    const x = (v) => u.valToPos(v, "x", true);
    const y0 = u.valToPos(0, "y", true);
    line(u, left, y0, left + width, y0, INK.muted, [], 1);
    if (!histograms) bands(u, c, x, y0);
    for (const s of recent) line(u, x(s), y0 - 6 * px, x(s), y0 + 6 * px, INK.info, [], 2);
    const rows = [
      ["threshold", c.threshold, INK.threshold, [6, 4]],
      [`p${pct} OK`, c.p99_ok, INK.ok, [2, 3]],
      ["p5 NG", c.p5_ng, INK.ng, [2, 3]],
    ];
    const strip = top - (LABEL_ROWS * ROW_PX + 6) * px;
    rows.forEach(([label, v, colour, dash], row) => {
      if (nil(v)) return;
      const labelY = strip + (row + 0.5) * ROW_PX * px;
      line(u, x(v), labelY, x(v), top + height, colour, dash);
      tag(u, `${label} ${num(v)}`, x(v), labelY, colour);
    });
  }
}

function seqRange(seqs) {
  return seqs.length ? [seqs[0] - 0.5, seqs.at(-1) + 0.5] : [0, 1];
}

function counts(scores, top) {
  const bins = new Array(BINS).fill(0);
  for (const s of scores) bins[Math.min(BINS - 1, Math.max(0, Math.floor((s / top) * BINS)))] += 1;
  return bins;
}

function nulls() {
  return new Array(BINS).fill(null);
}

// Summary bands, for a calibration stored without its scores: OK from its mean to its
// p99 above the zero line, NG from its p5 to its mean below.
function bands(u, c, x, y0) {
  const ctx = u.ctx;
  const px = uPlot.pxRatio;
  const band = (lo, hi, up, fill, stroke) => {
    if (nil(lo) || nil(hi)) return;
    const a = x(Math.min(lo, hi));
    const w = Math.max(3 * px, x(Math.max(lo, hi)) - a);
    const h = 26 * px;
    const y = up ? y0 - 14 * px - h : y0 + 14 * px;
    ctx.save();
    ctx.fillStyle = fill;
    ctx.strokeStyle = stroke;
    ctx.lineWidth = px;
    ctx.fillRect(a, y, w, h);
    ctx.strokeRect(a, y, w, h);
    ctx.restore();
  };
  band(c.ok_mean, c.p99_ok, true, "rgba(63, 185, 80, 0.35)", INK.ok);
  band(c.p5_ng, c.ng_mean, false, "rgba(248, 81, 73, 0.35)", INK.ng);
}

// -- the ROI table's sparklines -------------------------------------------------------------

// One small plot per ROI, kept in its row and drawn again only when its scores changed:
// the last scores as a line, their thresholds dashed, the last dot OK green or NG red.
const sparks = new Map(); // roi key -> {plot, element}

function sparkline(key, points) {
  const last = points.at(-1);
  const signature = last ? `${points.length}|${points[0].seq}|${last.seq}|${last.score}|${last.threshold}` : "";
  const known = sparks.get(key);
  if (known && known.signature === signature) return known.element;
  const judged = points.filter((p) => !nil(p.threshold)).at(-1);
  const threshold = judged ? judged.threshold : null;
  const scores = points.map((p) => p.score);
  const data = [
    points.map((_, i) => i),
    scores,
    points.map((p) => (nil(p.threshold) ? null : p.threshold)),
    points.map((p) => (p === last ? p.score : null)),
  ];
  let spark = sparks.get(key);
  if (!spark) {
    const element = document.createElement("div");
    element.className = "spark";
    const model = { points, threshold };
    const plot = new uPlot(sparkOptions(model), data, element);
    spark = { plot, element, model };
    sparks.set(key, spark);
  } else {
    Object.assign(spark.model, { points, threshold });
    spark.plot.setData(data);
  }
  spark.signature = signature;
  spark.element.dataset.points = String(points.length);
  return spark.element;
}

function sparkOptions(model) {
  const lastColour = () => {
    const last = model.points.at(-1);
    return last && last.is_anomaly ? INK.ng : last && last.is_anomaly === false ? INK.ok : INK.muted;
  };
  return {
    width: 64,
    height: 26,
    class: "spark-plot",
    padding: [4, 4, 4, 4],
    legend: { show: false },
    cursor: { show: false },
    select: { show: false },
    axes: [{ show: false }, { show: false }],
    scales: {
      x: { time: false, range: () => seqRange(model.points.map((_, i) => i)) },
      y: { range: (u, lo, hi) => [0, Math.max(hi ?? 0, model.threshold ?? 0) * 1.1 || 1] },
    },
    series: [
      {},
      { stroke: INK.info, width: 1.5, points: { show: false } },
      { stroke: INK.threshold, width: 1, dash: [3, 2], paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } },
      { stroke: lastColour, paths: () => null, points: { show: true, size: 6, space: 0, fill: lastColour, stroke: lastColour } },
    ],
  };
}
