// A study: its cell x seed completion matrix (live), the report's tables and findings, its
// figures (the report page itself), the gradient flow of sibling cells side by side (plain,
// BatchNorm, BatchNorm + residual at the same depth), and buttons to resubmit failed runs
// and to cancel.

import { get, post, authHeaders } from "./api.js";
import { gradflowChart, formatValue } from "./charts.js";
import { h, statusBadge, debounce, errorBox } from "./dom.js";
import { follow } from "./events.js";

const SWITCHES = ["batch_norm", "residual"];

function variant(coordinates) {
  const bn = coordinates.batch_norm;
  const res = coordinates.residual;
  if (bn === undefined && res === undefined) return "";
  return [bn ? "BN" : "plain", res ? "+ residual" : ""].filter(Boolean).join(" ");
}

// Cells that differ only by the BatchNorm / residual switches are siblings.
function siblingGroups(cells) {
  const groups = new Map();
  for (const cell of cells) {
    const rest = Object.entries(cell.coordinates).filter(([k]) => !SWITCHES.includes(k.split(".").pop()));
    const key = JSON.stringify(rest.sort());
    if (!groups.has(key)) groups.set(key, { label: rest.map(([k, v]) => `${k.split(".").pop()}=${v}`).join(", "), cells: [] });
    groups.get(key).cells.push(cell);
  }
  return [...groups.values()];
}

export function studyPage(root, id) {
  const base = `studies/${encodeURIComponent(id)}`;
  const state = { study: null, report: null, live: "connecting" };
  const el = {
    header: h("div", { class: "page-header" }),
    matrix: h("div", { id: "completion" }),
    table: h("div", { id: "report-table" }),
    findings: h("div", { id: "findings" }),
    siblings: h("div", { id: "siblings" }),
    figures: h("div", { id: "figures" }),
  };
  root.replaceChildren(el.header,
    h("section", {}, h("h2", {}, "Completion (cell x seed)"), el.matrix),
    h("section", {}, h("h2", {}, "Results"), el.table, h("h3", {}, "Findings"), el.findings),
    h("section", {}, h("h2", {}, "Gradient flow of sibling cells (last epoch, mean across seeds)"), el.siblings),
    h("section", {}, h("h2", {}, "Report figures"), el.figures));

  function renderHeader() {
    const s = state.study;
    const failed = s.cells.some((c) => c.seeds.some((x) => x.status === "failed"));
    el.header.replaceChildren(
      h("h1", {}, s.name, " ", h("span", { class: "muted" }, `(${s.scale})`)),
      h("div", { class: "facts" },
        h("span", { id: "progress" }, `${s.runs_finished}/${s.runs_planned} runs finished`),
        s.owner ? h("span", {}, `owner ${s.owner}`) : null,
        h("span", { id: "live", class: `live live-${state.live}` }, state.live), h("code", {}, s.id)),
      h("div", { class: "actions" },
        h("button", { id: "resubmit", disabled: !failed, onclick: async () => {
          const answer = await post(`${base}/resubmit`);
          el.header.append(h("p", { class: "note" }, `${answer.runs_queued} run(s) queued again.`));
          restartStream();
          refresh();
        } }, "Resubmit failed runs"),
        h("button", { id: "cancel", onclick: async () => {
          if (!window.confirm(`Cancel every run of ${s.name}?`)) return;
          await post(`${base}/cancel`);
          refresh();
        } }, "Cancel study")));
  }

  function renderMatrix() {
    const cells = state.study.cells;
    const seeds = [...new Set(cells.flatMap((c) => c.seeds.map((s) => s.seed)))];
    el.matrix.replaceChildren(h("table", { id: "completion-matrix" },
      h("thead", {}, h("tr", {}, h("th", {}, "cell"), seeds.map((s) => h("th", {}, `seed ${s}`)))),
      h("tbody", {}, cells.map((c) => h("tr", {},
        h("td", {}, h("a", { href: `#/experiments/${c.experiment_id}` }, c.name)),
        seeds.map((seed) => {
          const x = c.seeds.find((s) => s.seed === seed);
          return h("td", { "data-run": x && x.run_id, class: `cell status-${x ? x.status : "missing"}` },
            x ? [statusBadge(x.status), ` ${x.epochs_done}/${x.epochs_planned ?? "?"}`] : "");
        }))))));
  }

  function renderReport() {
    const r = state.report;
    const metricKeys = r.table.length ? Object.keys(r.table[0]).filter((k) => r.table[0][k] && typeof r.table[0][k] === "object" && "mean" in r.table[0][k]) : [];
    el.table.replaceChildren(h("table", { id: "report-rows" },
      h("thead", {}, h("tr", {}, ["cell", "depth", "BN", "res", "seeds done", ...metricKeys].map((c) => h("th", {}, c)))),
      h("tbody", {}, r.table.map((row) => h("tr", {},
        h("td", {}, row.name), h("td", {}, String(row.depth)), h("td", {}, row.batch_norm ? "yes" : ""),
        h("td", {}, row.residual ? "yes" : ""), h("td", {}, `${row.seeds_finished}/${Array.isArray(row.seeds_planned) ? row.seeds_planned.length : row.seeds_planned}`),
        metricKeys.map((k) => h("td", {}, row[k].n ? `${formatValue(row[k].mean)} +- ${formatValue(row[k].std)}` : "-")))))));
    el.findings.replaceChildren(r.findings.length
      ? h("ul", {}, r.findings.map((f) => h("li", { class: "finding" }, h("span", { class: "kind" }, f.kind), " ", f.sentence)))
      : h("p", { class: "muted" }, "No finding yet."));
  }

  async function renderSiblings() {
    const groups = siblingGroups(state.study.cells);
    const flows = await Promise.all(state.study.cells.map((c) => get(`experiments/${c.experiment_id}/gradflow`)));
    const byExperiment = new Map(state.study.cells.map((c, i) => [c.experiment_id, flows[i]]));
    const all = flows.flatMap((f) => f.across_seeds.mean.flat()).filter((v) => v != null && v > 0);
    const yRange = all.length ? [Math.min(...all) / 2, Math.max(...all) * 2] : null;
    el.siblings.replaceChildren(...groups.map((group, g) => h("div", { class: "sibling-group" },
      h("h3", {}, group.label || "same configuration but BatchNorm and residual"),
      h("div", { class: "side-by-side" }, group.cells.map((cell, k) => {
        const box = h("div", { class: "sibling", "data-experiment": cell.experiment_id });
        const f = byExperiment.get(cell.experiment_id);
        const epochs = f.across_seeds.epochs;
        if (!epochs.length) box.append(h("p", { class: "muted" }, `${cell.name}: no epoch yet`));
        queueMicrotask(() => {
          if (epochs.length) {
            gradflowChart(box, `sibling-${g}-${k}`, `${cell.name} ${variant(cell.coordinates)}`, f.layers, epochs,
              f.across_seeds.mean, [epochs.length - 1], { width: 360, height: 240, yRange });
          }
        });
        return box;
      })))));
  }

  async function renderFigures() {
    // The report page itself, with its figures, in a sandboxed frame (fetched with the token).
    const response = await fetch(`${base}/report?format=html`, { headers: authHeaders() });
    if (!response.ok) return;
    const frame = h("iframe", { id: "report-frame", sandbox: "", title: "study report" });
    frame.srcdoc = await response.text();
    el.figures.replaceChildren(frame);
  }

  async function refresh() {
    try {
      const [study, report] = await Promise.all([get(base), get(`${base}/report`)]);
      Object.assign(state, { study, report });
      renderHeader();
      renderMatrix();
      renderReport();
      await renderSiblings();
    } catch (error) {
      root.prepend(errorBox(error));
    }
  }

  let stream = null;
  const refreshSoon = debounce(refresh, 500);
  const figuresSoon = debounce(renderFigures, 3000);
  function restartStream() {
    if (stream) stream.close();
    stream = follow(`${base}/events`, (type, data) => {
      if (type === "epoch" || type === "status") {
        const td = el.matrix.querySelector(`td[data-run="${data.run_id}"]`);
        if (td && type === "status") td.replaceChildren(statusBadge(data.status), ` ${data.epochs_done}/${data.epochs_planned ?? "?"}`);
        refreshSoon();
        if (type === "status") figuresSoon();
      }
      if (type === "end") { refreshSoon(); figuresSoon(); }
    }, { onState: (live) => { state.live = live; if (state.study) renderHeader(); } });
  }
  refresh().then(() => { restartStream(); renderFigures(); });
  return () => stream && stream.close();
}
