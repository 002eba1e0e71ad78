// An experiment: live progress, curves with +-std bands across seeds, gradient flow per layer
// (lines for chosen epochs on a log scale, and a layers x epochs heatmap), the diagnostics in
// words, the runs, and links to the exports. Follows the experiment's event stream.

import { download, get, post } from "./api.js";
import { bandChart, gradflowChart, heatmap } from "./charts.js";
import { compareHref } from "./compare.js";
import { h, statusBadge, debounce, errorBox, duration, isFinished } from "./dom.js";
import { follow } from "./events.js";
import { formatMetric } from "./numbers.js";

function evenPick(count, max = 5) {
  if (count <= max) return [...Array(count).keys()];
  const picks = new Set();
  for (let k = 0; k < max; k++) picks.add(Math.round((k * (count - 1)) / (max - 1)));
  return [...picks];
}

export function experimentPage(root, id) {
  const state = { experiment: null, metrics: null, flow: null, findings: null,
    stat: "mean_abs", window: "last_batch", seed: "", chosen: null, live: "connecting",
    lastEpoch: null };
  const base = `experiments/${encodeURIComponent(id)}`;

  const el = {
    header: h("div", { class: "page-header" }),
    curves: h("div", { class: "grid2" }, h("div", { id: "loss-chart" }), h("div", { id: "acc-chart" })),
    controls: h("div", { class: "controls" }),
    flow: h("div", { id: "gradflow-chart" }),
    heat: h("div", { id: "gradflow-heatmap", class: "heatmap" }),
    exports: h("div", { class: "exports" }),
    findings: h("div", { id: "findings" }),
    runs: h("div", { id: "runs" }),
  };
  root.replaceChildren(el.header,
    h("section", {}, h("h2", {}, "Loss and accuracy (mean +- std across seeds)"), el.curves),
    h("section", {}, h("h2", {}, "Gradient flow per layer"), el.controls, el.flow,
      h("h3", {}, "Layers x epochs"), el.heat, el.exports),
    h("section", {}, h("h2", {}, "Diagnostics"), el.findings),
    h("section", {}, h("h2", {}, "Runs"), el.runs));

  function planned() {
    return (state.experiment.spec.hyperparameters || {}).epochs || 0;
  }

  function renderHeader() {
    const e = state.experiment;
    const runs = e.runs;
    const done = runs.reduce((a, r) => a + r.epochs_done, 0);
    const total = planned() * runs.length;
    const seconds = state.metrics ? state.metrics.across_seeds.mean.seconds.filter((v) => v != null) : [];
    const perEpoch = seconds.length ? seconds.reduce((a, b) => a + b, 0) / seconds.length : NaN;
    const remaining = Math.max(0, ...runs.filter((r) => !isFinished(r.status)).map((r) => planned() - r.epochs_done));
    // once every run has finished the stream has nothing more to say, whatever its state
    const live = runs.every((r) => isFinished(r.status)) ? "ended" : state.live;
    const last = state.lastEpoch || lastMean(state.metrics);
    const cancel = h("button", { id: "cancel", onclick: async () => {
      if (!window.confirm(`Cancel ${e.name}?`)) return;
      await post(`${base}/cancel`);
      refresh();
    } }, "Cancel");
    el.header.replaceChildren(
      h("h1", {}, e.name, " ", statusBadge(e.status)),
      h("div", { class: "facts" },
        h("span", { id: "progress" }, `${done}/${total} epochs`),
        h("span", { id: "current-loss" }, last ? `train loss ${formatMetric("train_loss", last.train_loss)}, val loss ${formatMetric("val_loss", last.val_loss)}` : "no epoch yet"),
        h("span", { id: "eta" }, remaining ? `ETA ~${duration(remaining * perEpoch)}` : ""),
        e.owner ? h("span", {}, `owner ${e.owner}`) : null,
        h("span", { id: "live", class: `live live-${live}` }, live),
        h("code", {}, e.id)),
      h("div", { class: "actions" }, ["queued", "running"].includes(e.status) ? cancel : null,
        h("a", { id: "compare-link", href: compareHref([e.id]) }, "Compare with other experiments")));
  }

  function lastMean(m) {
    if (!m || !m.across_seeds.epochs.length) return null;
    const k = m.across_seeds.epochs.length - 1;
    return { train_loss: m.across_seeds.mean.train_loss[k], val_loss: m.across_seeds.mean.val_loss[k] };
  }

  function renderCurves() {
    const a = state.metrics.across_seeds;
    const line = (name, label) => ({ label, mean: a.mean[name], std: a.std[name] });
    bandChart(el.curves.children[0], "loss", "Loss", a.epochs, [line("train_loss", "train loss"), line("val_loss", "val loss")],
      (v) => formatMetric("loss", v));
    bandChart(el.curves.children[1], "accuracy", "Accuracy", a.epochs, [line("train_acc", "train acc"), line("val_acc", "val acc")],
      (v) => formatMetric("acc", v));
  }

  function flowSeries() {
    const f = state.flow;
    if (state.seed === "") return { epochs: f.across_seeds.epochs, values: f.across_seeds.mean };
    const run = f.runs[0];
    return { epochs: run.epochs, values: run.values };
  }

  function renderControls() {
    const e = state.experiment;
    const { epochs } = flowSeries();
    const select = (id, options, value, onchange) => h("select", { id, onchange },
      options.map(([v, label]) => h("option", { value: v, selected: String(v) === String(value) }, label)));
    const epochPicker = h("select", { id: "epochs", multiple: true, size: Math.min(6, Math.max(2, epochs.length)),
      onchange: (ev) => {
        state.chosen = [...ev.target.selectedOptions].map((o) => Number(o.value));
        renderFlow();
      } }, epochs.map((ep, i) => h("option", { value: i, selected: chosen().includes(i) }, `epoch ${ep}`)));
    el.controls.replaceChildren(
      h("label", {}, "statistic ", select("stat", [["mean_abs", "mean |g|"], ["max_abs", "max |g|"], ["l2", "l2 norm"]], state.stat,
        (ev) => { state.stat = ev.target.value; loadFlow(); })),
      h("label", {}, "window ", select("window", [["last_batch", "last batch"], ["epoch_mean", "epoch mean"]], state.window,
        (ev) => { state.window = ev.target.value; loadFlow(); })),
      h("label", {}, "seeds ", select("seed", [["", "mean across seeds"], ...e.runs.map((r) => [r.seed, `seed ${r.seed}`])], state.seed,
        (ev) => { state.seed = ev.target.value; loadFlow(); })),
      h("label", {}, "epochs ", epochPicker));
  }

  function chosen() {
    const { epochs } = flowSeries();
    const picked = (state.chosen || []).filter((i) => i < epochs.length);
    return picked.length ? picked : evenPick(epochs.length);
  }

  function renderFlow() {
    const f = state.flow;
    const { epochs, values } = flowSeries();
    if (!epochs.length) {
      el.flow.replaceChildren(h("p", { class: "muted" }, "No epoch recorded yet."));
      el.heat.replaceChildren();
    } else {
      const who = state.seed === "" ? `mean of ${f.runs.length} seed(s)` : `seed ${state.seed}`;
      gradflowChart(el.flow, "gradflow", `${f.stat} (${f.window}), ${who}`, f.layers, epochs, values, chosen());
      heatmap(el.heat, "heatmap", f.layers, epochs, values);
    }
    const query = `stat=${state.stat}&window=${state.window}${state.seed === "" ? "" : `&seed=${state.seed}`}`;
    const link = (label, fmt, name) => h("a", { href: `${base}/gradflow?${query}&format=${fmt}`, class: "export",
      onclick: (ev) => { ev.preventDefault(); download(`${base}/gradflow?${query}&format=${fmt}`, name); } }, label);
    el.exports.replaceChildren("Export: ",
      link("CSV", "csv", `gradflow-${id}-${state.stat}.csv`), " ",
      link("PNG (log scale)", "png&log_scale=true", `gradflow-${id}-${state.stat}.png`), " ",
      h("a", { href: `${base}/metrics` , class: "export", onclick: (ev) => { ev.preventDefault(); download(`${base}/metrics`, `metrics-${id}.json`); } }, "metrics JSON"));
  }

  function renderFindings() {
    const findings = state.findings || [];
    el.findings.replaceChildren(findings.length
      ? h("ul", {}, findings.map((f) => h("li", { class: "finding" }, h("span", { class: "kind" }, f.kind), " ", f.sentence)))
      : h("p", { class: "muted" }, "No problem found so far (vanishing or exploding gradients, not training, overfitting)."));
  }

  function renderRuns() {
    const rows = state.experiment.runs.map((r) => h("tr", { "data-run": r.id },
      h("td", {}, String(r.seed)), h("td", {}, statusBadge(r.status)), h("td", {}, String(r.attempt)),
      h("td", { class: "epochs" }, `${r.epochs_done}/${planned()}`),
      h("td", {}, r.test && r.test.acc != null ? formatMetric("test_acc", r.test.acc) : ""),
      h("td", { class: "run-error" }, r.error || "")));
    el.runs.replaceChildren(h("table", { id: "runs-table" },
      h("thead", {}, h("tr", {}, ["seed", "status", "attempts", "epochs", "test acc", "last error"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows)));
  }

  async function loadFlow() {
    const seed = state.seed === "" ? "" : `&seed=${state.seed}`;
    state.flow = await get(`${base}/gradflow?stat=${state.stat}&window=${state.window}${seed}`);
    renderControls();
    renderFlow();
  }

  async function refresh() {
    try {
      const [experiment, metrics, findings] = await Promise.all([get(base), get(`${base}/metrics`),
        get(`${base}/diagnostics`)]);
      Object.assign(state, { experiment, metrics, findings: findings.findings, lastEpoch: null });
      renderHeader();
      renderCurves();
      renderFindings();
      renderRuns();
      await loadFlow();
    } catch (error) {
      root.prepend(errorBox(error));
    }
  }

  const refreshSoon = debounce(refresh, 300);
  let stream = null;
  refresh().then(() => {
    stream = follow(`${base}/events`, (type, data) => {
      if (type === "epoch") {
        state.lastEpoch = data;
        const run = state.experiment.runs.find((r) => r.id === data.run_id);
        if (run) run.epochs_done = Math.max(run.epochs_done, data.epoch + 1);
        renderHeader();
      }
      if (type !== "snapshot") refreshSoon();
    }, { onState: (live) => { state.live = live; if (state.experiment) renderHeader(); } });
  });
  return () => stream && stream.close();
}
