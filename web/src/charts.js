// Charts: uPlot line charts (curves with +-std bands, gradient flow per layer on a log scale)
// and a canvas heatmap (layers x epochs). Instances are kept on window.__gradlab.charts so a
// test can find where a value is drawn.

import uPlot from "uplot";

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
  "#e377c2", "#7f7f7f", "#bcbd22"];

const EPOCH_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];

export function color(i) {
  return PALETTE[i % PALETTE.length];
}

function fade(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${n >> 16},${(n >> 8) & 255},${n & 255},${alpha})`;
}

export function formatValue(v) {
  if (v == null || !Number.isFinite(v)) return "-";
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(4) : v.toPrecision(6);
}

function register(name, chart) {
  window.__gradlab = window.__gradlab || { charts: {} };
  const old = window.__gradlab.charts[name];
  if (old && old !== chart && old.destroy) old.destroy();
  window.__gradlab.charts[name] = chart;
  return chart;
}

function width(el) {
  return Math.max(280, Math.floor(el.getBoundingClientRect().width || 600));
}

// The band edges stay off the legend: it reads one value per line, the band shows the spread.
function hideFromLegend(chart, hidden) {
  chart.root.querySelectorAll(".u-legend .u-series").forEach((row, i) => {
    if (hidden.has(i)) row.style.display = "none";
  });
}

// A value that is not there (undefined: another line's x) is skipped, not a gap; a missing
// value (null) is a gap.
function shifted(values, by, sign) {
  return values.map((m, k) => (m === undefined ? undefined : m == null ? null : m + sign * (by[k] || 0)));
}

// Mean +- std across seeds: lines = [{label, mean: [...], std: [...], color?}] over x = epochs
// (undefined where a line has no such epoch); format writes a value in the legend.
export function bandChart(el, name, title, epochs, lines, format = formatValue) {
  el.replaceChildren();
  const series = [{ label: "epoch" }];
  const data = [epochs];
  const bands = [];
  const hidden = new Set();
  lines.forEach((line, i) => {
    const c = line.color || color(i);
    series.push({ label: line.label, stroke: c, width: 2, spanGaps: true, value: (u, v) => format(v) });
    data.push(line.mean);
    const top = data.length;
    for (const [suffix, sign] of [["+std", 1], ["-std", -1]]) {
      hidden.add(data.length);
      series.push({ label: `${line.label} ${suffix}`, stroke: fade(c, 0.25), width: 1, spanGaps: true });
      data.push(shifted(line.mean, line.std, sign));
    }
    bands.push({ series: [top, top + 1], fill: fade(c, 0.15) });
  });
  const opts = {
    title, width: width(el), height: 260, series, bands,
    scales: { x: { time: false } },
    axes: [{ label: "epoch", incrs: EPOCH_STEPS }, {}],
    legend: { live: true },
  };
  const chart = new uPlot(opts, data, el);
  hideFromLegend(chart, hidden);
  return register(name, chart);
}

// Where each layer sits from input (0) to output (1): networks of any depth share the axis.
export function relativeDepths(count) {
  return count < 2 ? [0] : [...Array(count).keys()].map((j) => j / (count - 1));
}

const DEPTH_TICKS = [0, 0.25, 0.5, 0.75, 1];
const DEPTH_MARGIN = 0.03;

// Gradient flow of several networks on one log axis, x = relative depth. entries =
// [{label, layers, mean: [per layer], lo?, hi?, color?}]; lo/hi draw a band (the seeds'
// spread). Hovering shows, for each network, its nearest layer's name and value.
export function depthChart(el, name, title, entries, opts = {}) {
  el.replaceChildren();
  const key = (x) => Math.round(x * 1e9);
  const xs = [...new Set(entries.flatMap((e) => relativeDepths(e.layers.length).map(key)))]
    .sort((a, b) => a - b).map((k) => k / 1e9);
  const slot = new Map(xs.map((x, i) => [key(x), i]));
  const align = (entry, values) => {
    const out = new Array(xs.length).fill(undefined);
    relativeDepths(entry.layers.length).forEach((x, j) => {
      const v = values[j];
      out[slot.get(key(x))] = v != null && v > 0 ? v : null; // log axis: 0 cannot be drawn
    });
    return out;
  };
  const series = [{ label: "relative depth", value: (u, v) => (v == null ? "-" : v.toFixed(2)) }];
  const data = [xs];
  const bands = [];
  const hidden = new Set();
  entries.forEach((entry, i) => {
    const c = entry.color || color(i);
    const layerAt = new Map(relativeDepths(entry.layers.length).map((x, j) => [slot.get(key(x)), j]));
    series.push({ label: entry.label, stroke: c, width: 2, spanGaps: true,
      points: { show: entry.layers.length <= 60 },
      value: (u, v, s, idx) => (idx == null || !layerAt.has(idx) ? "-"
        : `${formatValue(v)} at ${entry.layers[layerAt.get(idx)]}`) });
    data.push(align(entry, entry.mean));
    if (entry.lo && entry.hi) {
      const top = data.length;
      for (const edge of [entry.hi, entry.lo]) {
        hidden.add(data.length);
        series.push({ label: `${entry.label} spread`, stroke: fade(c, 0.25), width: 1, spanGaps: true,
          points: { show: false } });
        data.push(align(entry, edge));
      }
      bands.push({ series: [top, top + 1], fill: fade(c, 0.15) });
    }
  });
  const options = {
    title, width: opts.width || width(el), height: opts.height || 300, series, bands,
    padding: [null, 24, null, null],
    // a margin either side: the input and output layers' points are drawn whole and can be hovered
    scales: { x: { time: false, range: [-DEPTH_MARGIN, 1 + DEPTH_MARGIN] },
      y: { distr: 3, ...(opts.yRange ? { range: opts.yRange } : {}) } },
    axes: [
      { label: "relative depth (input -> output)", splits: () => DEPTH_TICKS,
        values: (u, ticks) => ticks.map((t) => (t === 0 ? "input" : t === 1 ? "output" : `${t * 100}%`)) },
      { label: opts.yLabel || "gradient",
        values: (u, ticks) => ticks.map((t) => (t == null ? "" : t.toExponential(0))), size: 70 },
    ],
    legend: { live: true },
  };
  const chart = new uPlot(options, data, el);
  hideFromLegend(chart, hidden);
  return register(name, chart);
}

// One shared y range (log axis) for charts that must be read against each other.
export function logRange(values) {
  const positive = values.filter((v) => v != null && v > 0);
  return positive.length ? [Math.min(...positive) / 2, Math.max(...positive) * 2] : null;
}

// Gradient flow as the seed report draws it: x = layers in depth order, y = statistic on a
// log scale, one line per chosen epoch. values[i][j] = layer j at epochs[i].
export function gradflowChart(el, name, title, layers, epochs, values, chosen, opts = {}) {
  el.replaceChildren();
  const x = layers.map((_, j) => j);
  const series = [{
    label: "layer",
    value: (u, v) => (v == null ? "-" : `${v}: ${layers[v]}`),
  }];
  const data = [x];
  chosen.forEach((i, k) => {
    series.push({ label: `epoch ${epochs[i]}`, stroke: color(k), width: 2,
      points: { show: layers.length <= 60 }, value: (u, v) => formatValue(v) });
    data.push(values[i].map((v) => (v != null && v > 0 ? v : null)));
  });
  const compact = layers.length > 14;
  const options = {
    title, width: opts.width || width(el), height: opts.height || 300, series, padding: [null, 48, null, null],
    scales: { x: { time: false }, y: { distr: 3, ...(opts.yRange ? { range: opts.yRange } : {}) } },
    axes: [
      {
        label: "layer (input -> output)",
        values: (u, ticks) => ticks.map((t) => (Number.isInteger(t) && layers[t] !== undefined
          ? (compact ? String(t) : layers[t]) : "")),
        rotate: compact ? 0 : -30,
        size: compact ? 40 : 90,
      },
      // log axes leave null where a tick gets no label
      { label: "gradient", values: (u, ticks) => ticks.map((t) => (t == null ? "" : t.toExponential(0))), size: 70 },
    ],
    legend: { live: true },
  };
  return register(name, new uPlot(options, data, el));
}

// Layers (rows, input at the top) x epochs (columns), colour = log10 of the value.
export function heatmap(el, name, layers, epochs, values) {
  el.replaceChildren();
  const cell = { w: Math.max(4, Math.min(24, Math.floor(560 / Math.max(epochs.length, 1)))),
    h: Math.max(4, Math.min(18, Math.floor(420 / Math.max(layers.length, 1)))) };
  const left = 170;
  const canvas = document.createElement("canvas");
  canvas.width = left + cell.w * epochs.length + 90;
  canvas.height = cell.h * layers.length + 30;
  const logs = values.flat().filter((v) => v != null && v > 0).map(Math.log10);
  const lo = logs.length ? Math.min(...logs) : 0;
  const hi = logs.length ? Math.max(...logs) : 1;
  const ctx = canvas.getContext("2d");
  ctx.font = "11px sans-serif";
  ctx.textBaseline = "middle";
  layers.forEach((layer, j) => {
    if (cell.h >= 9 || j % Math.ceil(9 / cell.h) === 0) {
      ctx.fillStyle = "#333";
      ctx.fillText(layer.slice(0, 26), 2, j * cell.h + cell.h / 2);
    }
    epochs.forEach((_, i) => {
      const v = values[i] ? values[i][j] : null;
      ctx.fillStyle = v != null && v > 0 ? viridis((Math.log10(v) - lo) / (hi - lo || 1)) : "#ddd";
      ctx.fillRect(left + i * cell.w, j * cell.h, cell.w - 1, cell.h - 1);
    });
  });
  ctx.fillStyle = "#333";
  ctx.fillText(`epochs ${epochs[0] ?? ""}..${epochs[epochs.length - 1] ?? ""}`, left, canvas.height - 10);
  for (let k = 0; k <= 10; k++) {
    ctx.fillStyle = viridis(k / 10);
    ctx.fillRect(canvas.width - 80, (10 - k) * ((canvas.height - 40) / 10), 14, (canvas.height - 40) / 10);
  }
  ctx.fillStyle = "#333";
  ctx.fillText(`1e${hi.toFixed(1)}`, canvas.width - 62, 6);
  ctx.fillText(`1e${lo.toFixed(1)}`, canvas.width - 62, canvas.height - 36);
  const tip = document.createElement("div");
  tip.className = "tooltip";
  tip.hidden = true;
  canvas.addEventListener("mousemove", (e) => {
    const r = canvas.getBoundingClientRect();
    const i = Math.floor((e.clientX - r.left - left) / cell.w);
    const j = Math.floor((e.clientY - r.top) / cell.h);
    if (i < 0 || i >= epochs.length || j < 0 || j >= layers.length) {
      tip.hidden = true;
      return;
    }
    tip.hidden = false;
    tip.textContent = `${layers[j]}, epoch ${epochs[i]}: ${formatValue(values[i][j])}`;
    tip.style.left = `${e.clientX - r.left + 12}px`;
    tip.style.top = `${e.clientY - r.top + 12}px`;
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
  el.append(canvas, tip);
  register(name, { canvas, cell, left, layers, epochs, values });
}

// A few stops of matplotlib's viridis, interpolated: perceptually even, readable in grey.
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function viridis(t) {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const k = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - k;
  const c = VIRIDIS[k].map((a, n) => Math.round(a + (VIRIDIS[k + 1][n] - a) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}
