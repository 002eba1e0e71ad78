// The compare view: any experiments overlaid, as the seed report argues. Gradient flow per
// layer on one log axis (x = relative depth, so VGG08 and VGG38 share it; a band for the
// seeds' spread), the four loss and accuracy curves with their seed bands, and the final
// metrics side by side. The selection lives in the URL (#/compare?ids=a,b&epoch=..), so a
// view can be shared and survives a reload. Reads only the experiments' own routes.

import { get } from "./api.js";
import { bandChart, color, depthChart, logRange } from "./charts.js";
import { h, statusBadge, errorBox } from "./dom.js";
import { formatMetric, formatSummary } from "./numbers.js";

const STATS = [["mean_abs", "mean |g|"], ["max_abs", "max |g|"], ["l2", "l2 norm"]];
const WINDOWS = [["last_batch", "last batch"], ["epoch_mean", "epoch mean"]];
const CURVES = [["train_loss", "training loss"], ["val_loss", "validation loss"],
  ["train_acc", "training accuracy"], ["val_acc", "validation accuracy"]];
const FINALS = [["final_train_loss", "train loss"], ["final_val_loss", "val loss"],
  ["final_train_acc", "train acc"], ["final_val_acc", "val acc"], ["test_loss", "test loss"],
  ["test_acc", "test acc"]];
const DEFAULTS = { stat: "mean_abs", window: "last_batch", epoch: "last" };

// The URL fragment of a comparison (what the front page and study pages link to).
export function compareHref(ids, options = {}) {
  const selection = { ...DEFAULTS, ...options };
  const params = new URLSearchParams({ ids: ids.join(",") });
  for (const [k, v] of Object.entries(DEFAULTS)) if (selection[k] !== v) params.set(k, selection[k]);
  return `#/compare?${params.toString().replaceAll("%2C", ",")}`;
}

function readSelection(query) {
  const params = new URLSearchParams(query);
  const pick = (name, allowed) => (allowed.some(([v]) => v === params.get(name)) ? params.get(name) : DEFAULTS[name]);
  const epoch = params.get("epoch");
  return {
    ids: [...new Set((params.get("ids") || "").split(",").map((s) => s.trim()).filter(Boolean))],
    stat: pick("stat", STATS),
    window: pick("window", WINDOWS),
    epoch: epoch && /^\d+$/.test(epoch) ? epoch : "last",
  };
}

const path = (id) => `experiments/${encodeURIComponent(id)}`;

// The values one experiment shows at the chosen epoch: the mean across seeds per layer, and
// the seeds' min and max (positive on a log axis, unlike mean - std).
export function flowAt(flow, epoch) {
  const a = flow.across_seeds;
  const k = epoch === "last" ? a.epochs.length - 1 : a.epochs.indexOf(Number(epoch));
  if (k < 0) return null;
  const rows = flow.runs.map((r) => r.values[r.epochs.indexOf(a.epochs[k])]).filter(Boolean);
  const spread = (pick) => flow.layers.map((_, j) => pick(...rows.map((row) => row[j] ?? NaN)));
  return { epoch: a.epochs[k], mean: a.mean[k],
    ...(rows.length > 1 ? { lo: spread(Math.min), hi: spread(Math.max) } : {}) };
}

// Each experiment's series laid on the union of their epochs (undefined where it has none).
function onEpochs(epochs, own, values) {
  const at = new Map(own.map((e, i) => [e, i]));
  return epochs.map((e) => (at.has(e) ? values[at.get(e)] : undefined));
}

function describe(spec) {
  const hp = spec.hyperparameters || {};
  return { depth: spec.depth, bn: spec.batch_norm ? "yes" : "", res: spec.residual ? "yes" : "",
    wd: hp.weight_decay ?? "" };
}

export function comparePage(root, query) {
  const state = { ...readSelection(query), loaded: new Map(), errors: [], catalogue: null };
  const el = {
    picker: h("div", { id: "compare-picker", class: "picker" }),
    controls: h("div", { class: "controls" }),
    flow: h("div", { id: "compare-gradflow" }),
    curves: h("div", { class: "grid-2x2", id: "compare-curves" },
      CURVES.map(([metric]) => h("div", { id: `compare-${metric}` }))),
    table: h("div", { id: "compare-table" }),
  };
  const page = h("div", { id: "compare-page" }, h("h1", {}, "Compare experiments"), el.picker,
    h("section", {}, h("h2", {}, "Gradient flow per layer (mean across seeds, band: the seeds' min to max)"),
      el.controls, el.flow),
    h("section", {}, h("h2", {}, "Loss and accuracy (mean +- std across seeds)"), el.curves),
    h("section", {}, h("h2", {}, "Final metrics (mean +- std across finished seeds)"), el.table));
  root.replaceChildren(page);

  function writeUrl() {
    // replaceState: no hashchange, so the page is not rebuilt; a reload reads it back
    history.replaceState(null, "", compareHref(state.ids, state));
  }

  const shown = () => state.ids.filter((id) => state.loaded.has(id));

  function renderPicker() {
    const chips = state.ids.map((id, i) => {
      const e = state.loaded.get(id);
      return h("span", { class: "chip", "data-id": id },
        h("span", { class: "swatch", style: `background:${color(i)}` }),
        e ? h("a", { href: `#/experiments/${id}` }, e.experiment.name) : h("code", {}, id),
        e ? statusBadge(e.experiment.status) : null,
        h("button", { class: "remove", title: "remove from the comparison",
          onclick: () => { state.ids = state.ids.filter((x) => x !== id); changed(); } }, "x"));
    });
    const choices = (state.catalogue || []).filter((e) => !state.ids.includes(e.id));
    const add = h("select", { id: "compare-add", disabled: !choices.length,
      onchange: (ev) => { if (ev.target.value) { state.ids = [...state.ids, ev.target.value]; changed(); } } },
      h("option", { value: "" }, choices.length ? "add an experiment..." : "no other experiment"),
      choices.map((e) => h("option", { value: e.id }, `${e.name} (${e.status}, ${e.id.slice(0, 8)})`)));
    const hint = state.ids.length < 2 ? [h("p", { class: "muted" },
      "Pick two or more experiments: tick them on the front page or a study page, or add them here.")] : [];
    el.picker.replaceChildren(...chips, add, ...state.errors.map(errorBox), ...hint);
  }

  function renderControls() {
    const epochs = [...new Set(shown().flatMap((id) => state.loaded.get(id).flow.across_seeds.epochs))]
      .sort((a, b) => a - b);
    const select = (id, options, value, onchange) => h("select", { id, onchange },
      options.map(([v, label]) => h("option", { value: v, selected: String(v) === String(value) }, label)));
    el.controls.replaceChildren(
      h("label", {}, "statistic ", select("compare-stat", STATS, state.stat, (ev) => { state.stat = ev.target.value; changed(); })),
      h("label", {}, "window ", select("compare-window", WINDOWS, state.window, (ev) => { state.window = ev.target.value; changed(); })),
      h("label", {}, "epoch ", select("compare-epoch",
        [["last", "last (each its own)"], ...epochs.map((e) => [String(e), `epoch ${e}`])], state.epoch,
        (ev) => { state.epoch = ev.target.value; writeUrl(); renderFlow(); })));
  }

  function renderFlow() {
    const entries = [];
    const missing = [];
    state.ids.forEach((id, i) => {
      const e = state.loaded.get(id);
      if (!e) return;
      const at = flowAt(e.flow, state.epoch);
      if (!at) { missing.push(e.experiment.name); return; }
      entries.push({ label: e.experiment.name, color: color(i), layers: e.flow.layers, ...at });
    });
    if (!entries.length) {
      el.flow.replaceChildren(h("p", { class: "muted" }, shown().length ? "No epoch recorded at this epoch." : ""));
      return;
    }
    const yRange = logRange(entries.flatMap((e) => [...e.mean, ...(e.lo || []), ...(e.hi || [])]));
    const epochText = state.epoch === "last" ? "last epoch of each" : `epoch ${state.epoch}`;
    depthChart(el.flow, "compare-gradflow", `${state.stat} (${state.window}), ${epochText}`, entries,
      { yRange, yLabel: state.stat });
    if (missing.length) el.flow.append(h("p", { class: "muted", id: "compare-missing" }, `No epoch ${state.epoch} yet: ${missing.join(", ")}.`));
  }

  function renderCurves() {
    const ids = shown();
    const epochs = [...new Set(ids.flatMap((id) => state.loaded.get(id).metrics.across_seeds.epochs))]
      .sort((a, b) => a - b);
    CURVES.forEach(([metric, title], c) => {
      const lines = state.ids.map((id, i) => {
        const e = state.loaded.get(id);
        if (!e) return null;
        const a = e.metrics.across_seeds;
        return { label: e.experiment.name, color: color(i),
          mean: onEpochs(epochs, a.epochs, a.mean[metric]), std: onEpochs(epochs, a.epochs, a.std[metric]) };
      }).filter(Boolean);
      bandChart(el.curves.children[c], `compare-${metric}`, title, epochs, lines, (v) => formatMetric(metric, v));
    });
  }

  function renderTable() {
    const rows = state.ids.map((id, i) => {
      const e = state.loaded.get(id);
      if (!e) return null;
      const d = describe(e.experiment.spec);
      const metrics = (e.experiment.summary && e.experiment.summary.metrics) || {};
      const done = e.experiment.runs.filter((r) => r.status === "succeeded").length;
      return h("tr", { "data-id": id },
        h("td", {}, h("span", { class: "swatch", style: `background:${color(i)}` }), e.experiment.name),
        h("td", {}, String(d.depth)), h("td", {}, d.bn), h("td", {}, d.res), h("td", {}, String(d.wd)),
        h("td", {}, `${done}/${e.experiment.runs.length}`),
        FINALS.map(([key]) => h("td", { "data-metric": key }, formatSummary(key, metrics[key]))));
    }).filter(Boolean);
    el.table.replaceChildren(h("table", { id: "compare-final" },
      h("thead", {}, h("tr", {}, ["experiment", "depth", "BN", "residual", "weight decay", "seeds done",
        ...FINALS.map(([, label]) => label)].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows)));
  }

  async function loadOne(id) {
    const [experiment, metrics, flow] = await Promise.all([get(path(id)), get(`${path(id)}/metrics`),
      get(`${path(id)}/gradflow?stat=${state.stat}&window=${state.window}`)]);
    return { experiment, metrics, flow };
  }

  let generation = 0;
  async function changed() {
    writeUrl();
    const mine = ++generation;
    const results = await Promise.allSettled(state.ids.map(loadOne));
    if (mine !== generation) return; // a newer selection is loading
    state.loaded = new Map();
    state.errors = [];
    results.forEach((r, i) => {
      if (r.status === "fulfilled") state.loaded.set(state.ids[i], r.value);
      else state.errors.push(new Error(`${state.ids[i]}: ${r.reason.message}`));
    });
    renderPicker();
    renderControls();
    renderFlow();
    renderCurves();
    renderTable();
    page.dataset.ready = String(mine); // tests wait for this, not for time
  }

  get("experiments?limit=100").then((page) => { state.catalogue = page.items; renderPicker(); })
    .catch(() => {});
  changed();
  return () => { generation += 1; };
}
