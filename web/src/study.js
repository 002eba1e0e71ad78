// A study: its cell x seed completion matrix (live), the report's tables and findings, the
// seed report's comparisons (each opens the compare view), the gradient flow of every cell on
// shared axes (grouped with its BatchNorm / residual siblings), the report's figures (the
// report page itself), and buttons to resubmit failed runs and to cancel.

import { get, post, authHeaders } from "./api.js";
import { depthChart, logRange } from "./charts.js";
import { compareHref } from "./compare.js";
import { seedComparisons, siblingGroups } from "./comparisons.js";
import { h, statusBadge, debounce, errorBox, isFinished } from "./dom.js";
import { follow } from "./events.js";
import { formatSummary } from "./numbers.js";

const SUMMARY_KEYS = ["train_loss", "val_loss", "train_acc", "val_acc", "test_loss", "test_acc"];

function variant(spec) {
  return [spec.batch_norm ? "BN" : "plain", spec.residual ? "+ residual" : ""].filter(Boolean).join(" ");
}

export function studyPage(root, id) {
  const base = `studies/${encodeURIComponent(id)}`;
  const state = { study: null, report: null, specs: new Map(), live: "connecting", picked: new Set() };
  const el = {
    header: h("div", { class: "page-header" }),
    matrix: h("div", { id: "completion" }),
    table: h("div", { id: "report-table" }),
    findings: h("div", { id: "findings" }),
    comparisons: h("div", { id: "comparisons" }),
    siblings: h("div", { id: "siblings" }),
    figures: h("div", { id: "figures" }, h("p", { class: "muted" }, "Loading the report...")),
  };
  root.replaceChildren(el.header,
    h("section", {}, h("h2", {}, "Completion (cell x seed)"), el.matrix),
    h("section", {}, h("h2", {}, "Compare"), el.comparisons),
    h("section", {}, h("h2", {}, "Results"), el.table, h("h3", {}, "Findings"), el.findings),
    h("section", {}, h("h2", {}, "Gradient flow of every cell (last epoch, mean across seeds; shared axes)"), el.siblings),
    h("section", {}, h("h2", {}, "Report figures"), el.figures));

  const ended = () => state.study.cells.every((c) => c.seeds.every((x) => isFinished(x.status)));

  function renderHeader() {
    const s = state.study;
    const failed = s.cells.some((c) => c.seeds.some((x) => x.status === "failed"));
    // once every run has finished the stream has nothing more to say, whatever its state
    const live = ended() ? "ended" : state.live;
    el.header.replaceChildren(
      h("h1", {}, s.name, " ", h("span", { class: "muted" }, `(${s.scale})`)),
      h("div", { class: "facts" },
        h("span", { id: "progress" }, `${s.runs_finished}/${s.runs_planned} runs finished`),
        s.owner ? h("span", {}, `owner ${s.owner}`) : null,
        h("span", { id: "live", class: `live live-${live}` }, live), h("code", {}, s.id)),
      h("div", { class: "actions" },
        h("button", { id: "resubmit", disabled: !failed, onclick: async () => {
          const answer = await post(`${base}/resubmit`);
          el.header.append(h("p", { class: "note" }, `${answer.runs_queued} run(s) queued again.`));
          restartStream();
          refresh();
        } }, "Resubmit failed runs"),
        h("button", { id: "cancel", disabled: ended(), onclick: async () => {
          if (!window.confirm(`Cancel every run of ${s.name}?`)) return;
          await post(`${base}/cancel`);
          refresh();
        } }, "Cancel study")));
  }

  function renderMatrix() {
    const cells = state.study.cells;
    const seeds = [...new Set(cells.flatMap((c) => c.seeds.map((s) => s.seed)))];
    const button = h("button", { id: "compare-cells", onclick: () => { location.hash = compareHref([...state.picked]); } });
    const sync = () => {
      button.disabled = state.picked.size < 2;
      button.textContent = `Compare ticked cells (${state.picked.size})`;
    };
    sync();
    const tick = (c) => h("input", { type: "checkbox", class: "pick", "aria-label": `compare ${c.name}`,
      checked: state.picked.has(c.experiment_id), onchange: (ev) => {
        if (ev.target.checked) state.picked.add(c.experiment_id);
        else state.picked.delete(c.experiment_id);
        sync();
      } });
    el.matrix.replaceChildren(h("table", { id: "completion-matrix" },
      h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, "cell"), seeds.map((s) => h("th", {}, `seed ${s}`)))),
      h("tbody", {}, cells.map((c) => h("tr", {},
        h("td", {}, tick(c)),
        h("td", {}, h("a", { href: `#/experiments/${c.experiment_id}` }, c.name)),
        seeds.map((seed) => {
          const x = c.seeds.find((s) => s.seed === seed);
          return h("td", { "data-run": x && x.run_id, class: `cell status-${x ? x.status : "missing"}` },
            x ? [statusBadge(x.status), ` ${x.epochs_done}/${x.epochs_planned ?? "?"}`] : "");
        }))))), h("div", { class: "actions" }, button));
  }

  function renderComparisons() {
    const cells = state.study.cells.map((c) => ({ ...c, spec: state.specs.get(c.experiment_id) }));
    const found = seedComparisons(cells);
    el.comparisons.replaceChildren(found.length
      ? h("ul", { id: "seed-comparisons" }, found.map((c) => h("li", { "data-axis": c.axis },
        h("a", { href: compareHref(c.cells.map((x) => x.experiment_id)), class: "comparison" },
          `${c.label}: ${c.cells.map((x) => x.name).join(" vs ")}`))))
      : h("p", { class: "muted" }, "The cells differ in more than one setting at a time: tick the ones to compare above."));
  }

  function renderReport() {
    const r = state.report;
    el.table.replaceChildren(h("table", { id: "report-rows" },
      h("thead", {}, h("tr", {}, ["cell", "depth", "BN", "res", "weight decay", "seeds done", ...SUMMARY_KEYS.map((k) => k.replace("_", " "))]
        .map((c) => h("th", {}, c)))),
      h("tbody", {}, r.table.map((row) => h("tr", {},
        h("td", {}, row.name), h("td", {}, String(row.depth)), h("td", {}, row.batch_norm ? "yes" : ""),
        h("td", {}, row.residual ? "yes" : ""), h("td", {}, String(row.weight_decay ?? "")),
        h("td", {}, `${row.seeds_finished}/${Array.isArray(row.seeds_planned) ? row.seeds_planned.length : row.seeds_planned}`),
        SUMMARY_KEYS.map((k) => h("td", { "data-metric": k }, formatSummary(k, row[k]))))))));
    el.findings.replaceChildren(r.findings.length
      ? h("ul", {}, r.findings.map((f) => h("li", { class: "finding" }, h("span", { class: "kind" }, f.kind), " ", f.sentence)))
      : h("p", { class: "muted" }, "No finding yet."));
  }

  // One chart per cell, all on the same axes: x = relative depth (input to output, whatever
  // the depth), y = one log range over every cell, so the eye can compare any two panels.
  async function renderSiblings() {
    const cells = state.study.cells;
    const flows = await Promise.all(cells.map((c) => get(`experiments/${c.experiment_id}/gradflow`)));
    const last = (f) => f.across_seeds.mean[f.across_seeds.epochs.length - 1] || [];
    const byExperiment = new Map(cells.map((c, i) => [c.experiment_id, flows[i]]));
    const yRange = logRange(flows.flatMap(last));
    const groups = siblingGroups(cells.map((c) => ({ ...c, spec: state.specs.get(c.experiment_id) })));
    el.siblings.replaceChildren(...groups.map((group, g) => h("div", { class: "sibling-group" },
      h("h3", {}, group.label || "every cell"),
      h("div", { class: "side-by-side" }, group.cells.map((cell, k) => {
        const box = h("div", { class: "sibling", "data-experiment": cell.experiment_id });
        const f = byExperiment.get(cell.experiment_id);
        const epochs = f.across_seeds.epochs;
        if (!epochs.length) box.append(h("p", { class: "muted" }, `${cell.name}: no epoch yet`));
        queueMicrotask(() => {
          if (epochs.length) {
            depthChart(box, `sibling-${g}-${k}`, `${cell.name} ${variant(cell.spec)}, epoch ${epochs[epochs.length - 1]}`,
              [{ label: cell.name, layers: f.layers, mean: last(f) }], { width: 380, height: 250, yRange, yLabel: f.stat });
          }
        });
        return box;
      })))));
  }

  // The server draws every figure of the report with matplotlib before it answers: seconds for
  // a small study, about a minute for the seed study on a busy CPU. So the page says so while
  // it waits, and asks again only when the study ends or the reader wants (a redraw per run
  // status change would keep a CPU of the API busy all along a study).
  let figuresAsked = 0;
  const figuresNote = h("p", { class: "muted", id: "figures-note" });
  const redraw = h("button", { id: "redraw-figures", onclick: () => renderFigures() }, "Redraw the figures");
  let changedSinceDrawn = 0;

  function noteFigures(text) {
    figuresNote.textContent = text;
    redraw.disabled = text.startsWith("Drawing");
  }

  async function renderFigures() {
    // The report page itself, with its figures, in a sandboxed frame (fetched with the token).
    const mine = ++figuresAsked;
    changedSinceDrawn = 0;
    noteFigures("Drawing the report's figures on the server (up to a minute for a large study)...");
    if (!el.figures.querySelector("iframe")) el.figures.replaceChildren(h("div", { class: "actions" }, figuresNote, redraw));
    try {
      const response = await fetch(`${base}/report?format=html`, { headers: authHeaders() });
      if (!response.ok) throw new Error(`the report answered HTTP ${response.status}`);
      const page = await response.text();
      if (mine !== figuresAsked) return;
      const frame = h("iframe", { id: "report-frame", sandbox: "", title: "study report" });
      frame.srcdoc = page;
      noteFigures("");
      el.figures.replaceChildren(h("div", { class: "actions" }, figuresNote, redraw), frame);
    } catch (error) {
      if (mine === figuresAsked) {
        noteFigures("");
        el.figures.replaceChildren(h("div", { class: "actions" }, figuresNote, redraw), errorBox(error));
      }
    }
  }

  function runChanged() {
    changedSinceDrawn += 1;
    if (!redraw.disabled) noteFigures(`${changedSinceDrawn} run status change(s) since these figures were drawn.`);
  }

  async function loadSpecs() {
    // a cell's spec never changes: read once per cell
    const missing = state.study.cells.filter((c) => !state.specs.has(c.experiment_id));
    const read = await Promise.all(missing.map((c) => get(`experiments/${c.experiment_id}`)));
    read.forEach((e) => state.specs.set(e.id, e.spec));
  }

  async function refresh() {
    try {
      const [study, report] = await Promise.all([get(base), get(`${base}/report`)]);
      Object.assign(state, { study, report });
      renderHeader();
      renderMatrix();
      renderReport();
      await loadSpecs();
      renderComparisons();
      await renderSiblings();
    } catch (error) {
      root.prepend(errorBox(error));
    }
  }

  let stream = null;
  const refreshSoon = debounce(refresh, 500);
  function restartStream() {
    if (stream) stream.close();
    let first = true;
    stream = follow(`${base}/events`, (type, data) => {
      if (type === "epoch" || type === "status") {
        const td = el.matrix.querySelector(`td[data-run="${data.run_id}"]`);
        if (td && type === "status") td.replaceChildren(statusBadge(data.status), ` ${data.epochs_done}/${data.epochs_planned ?? "?"}`);
        refreshSoon();
        if (type === "status") runChanged();
      }
      // an ended study's stream ends at once: its figures were asked for with the page
      if (type === "end") { refreshSoon(); if (!first) renderFigures(); }
      if (type !== "snapshot") first = false;
    }, { onState: (live) => { state.live = live; if (state.study) renderHeader(); } });
  }
  // the figures take longest: asked at once, beside the rest of the page
  renderFigures();
  refresh().then(restartStream);
  return () => { figuresAsked += 1; if (stream) stream.close(); };
}
