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

// Mean +- std across seeds: lines = [{label, mean: [...], std: [...]}] over x = epochs.
export function bandChart(el, name, title, epochs, lines) {
  el.replaceChildren();
  const series = [{ label: "epoch" }];
  const data = [epochs];
  const bands = [];
  lines.forEach((line, i) => {
    const c = color(i);
    const hi = line.mean.map((m, k) => (m == null ? null : m + (line.std[k] || 0)));
    const lo = line.mean.map((m, k) => (m == null ? null : m - (line.std[k] || 0)));
    series.push({ label: line.label, stroke: c, width: 2, value: (u, v) => formatValue(v) });
    data.push(line.mean);
    const top = data.length;
    series.push({ label: `${line.label} +std`, stroke: fade(c, 0.25), width: 1,
      value: (u, v) => formatValue(v) });
    data.push(hi);
    series.push({ label: `${line.label} -std`, stroke: fade(c, 0.25), width: 1,
      value: (u, v) => formatValue(v) });
    data.push(lo);
    bands.push({ series: [top, top + 1], fill: fade(c, 0.15) });
  });
  const opts = {
    title, width: width(el), height: 260, series, bands,
    scales: { x: { time: false } },
    axes: [{ label: "epoch", incrs: EPOCH_STEPS }, {}],
    legend: { live: true },
  };
  const chart = new uPlot(opts, data, el);
  // the band edges stay off the legend: it reads mean per line, the band shows the spread
  chart.root.querySelectorAll(".u-legend .u-series").forEach((row, i) => {
    if (i > 0 && (i - 1) % 3 !== 0) row.style.display = "none";
  });
  return register(name, chart);
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
