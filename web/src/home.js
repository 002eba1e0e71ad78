// The front page: studies and experiments with status, owner and progress. The list is read
// again every few seconds while the tab is visible (one small request, not one per item).
// Ticked experiments open side by side in the compare view.

import { get } from "./api.js";
import { compareHref } from "./compare.js";
import { h, statusBadge, when, errorBox, duration } from "./dom.js";
import { formatMetric } from "./numbers.js";

const REFRESH_MS = 5000;

function progressCell(p) {
  if (!p) return "";
  const pct = p.epochs_planned ? Math.round((100 * p.epochs_done) / p.epochs_planned) : 0;
  return h("div", { class: "progress", title: `${p.epochs_done}/${p.epochs_planned} epochs` },
    h("div", { class: "bar", style: `width:${pct}%` }),
    h("span", {}, `${p.epochs_done}/${p.epochs_planned} epochs, ${p.runs_finished}/${p.runs} runs`),
    p.current_train_loss == null ? null
      : h("span", { class: "loss" }, ` loss ${formatMetric("train_loss", p.current_train_loss)}`),
    p.eta_seconds == null ? null : h("span", { class: "eta" }, ` ETA ~${duration(p.eta_seconds)}`));
}

// The compare button follows the ticks; it cannot act with fewer than two.
function compareButton(selected) {
  const button = h("button", { id: "compare-selected",
    onclick: () => { location.hash = compareHref([...selected]); } });
  const sync = () => {
    button.disabled = selected.size < 2;
    button.textContent = `Compare selected (${selected.size})`;
  };
  sync();
  return { button, sync };
}

async function render(root, selected) {
  const [studies, experiments] = await Promise.all([get("studies?limit=50"),
    get("experiments?limit=100")]);
  const studyRows = studies.map((s) => h("tr", {},
    h("td", {}, h("a", { href: `#/studies/${s.id}` }, s.name)),
    h("td", {}, s.scale), h("td", {}, String(s.cells)), h("td", {}, s.owner || ""),
    h("td", {}, when(s.created_at))));
  const { button, sync } = compareButton(selected);
  const tick = (e) => h("input", { type: "checkbox", class: "pick", "aria-label": `compare ${e.name}`,
    checked: selected.has(e.id), onchange: (ev) => {
      if (ev.target.checked) selected.add(e.id);
      else selected.delete(e.id);
      sync();
    } });
  const experimentRows = experiments.items.map((e) => h("tr", { "data-id": e.id },
    h("td", {}, tick(e)),
    h("td", {}, h("a", { href: `#/experiments/${e.id}` }, e.name)),
    h("td", {}, statusBadge(e.status)), h("td", {}, progressCell(e.progress)),
    h("td", {}, e.owner || ""), h("td", {}, when(e.created_at))));
  root.replaceChildren(
    h("section", {},
      h("h2", {}, "Studies"),
      studyRows.length ? h("table", { id: "studies" },
        h("thead", {}, h("tr", {}, ["study", "scale", "cells", "owner", "created"].map((c) => h("th", {}, c)))),
        h("tbody", {}, studyRows)) : h("p", { class: "muted" }, "No study yet.")),
    h("section", {},
      h("h2", {}, "Experiments"),
      experimentRows.length ? h("div", { class: "actions" }, button) : null,
      experimentRows.length ? h("table", { id: "experiments" },
        h("thead", {}, h("tr", {}, ["", "experiment", "status", "progress", "owner", "created"].map((c) => h("th", {}, c)))),
        h("tbody", {}, experimentRows)) : h("p", { class: "muted" }, "No experiment yet: ",
        h("a", { href: "#/submit" }, "submit one"), ".")));
}

export function homePage(root) {
  let timer = null;
  const selected = new Set();
  const refresh = async () => {
    try {
      if (!document.hidden) await render(root, selected);
    } catch (error) {
      root.replaceChildren(errorBox(error));
    }
    timer = setTimeout(refresh, REFRESH_MS);
  };
  refresh();
  return () => clearTimeout(timer);
}
