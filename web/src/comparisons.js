// The comparisons a study offers, found from its cells' specs: for each setting that varies
// across cells, the cells that differ in that setting alone form one comparison (the seed
// report's pairs: VGG08 vs VGG38, BatchNorm on and off, residual on and off, and the
// weight-decay cells side by side). Names and seeds never count as a difference.

const IGNORED = new Set(["name", "seeds"]);
// The seed report's order; any other varying setting follows, by name.
const AXES = [
  ["depth", "depth"],
  ["batch_norm", "BatchNorm on/off"],
  ["residual", "residual on/off"],
  ["hyperparameters.weight_decay", "weight decay"],
];

function flatten(value, prefix = "", out = {}) {
  for (const [key, v] of Object.entries(value || {})) {
    const path = prefix ? `${prefix}.${key}` : key;
    if (!prefix && IGNORED.has(key)) continue;
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, path, out);
    else out[path] = JSON.stringify(v ?? null);
  }
  return out;
}

function axisLabel(path) {
  const known = AXES.find(([p]) => p === path);
  return known ? known[1] : path.split(".").pop().replaceAll("_", " ");
}

function axisRank(path) {
  const k = AXES.findIndex(([p]) => p === path);
  return k < 0 ? AXES.length : k;
}

function byValue(a, b) {
  const x = JSON.parse(a);
  const y = JSON.parse(b);
  if (typeof x === "number" && typeof y === "number") return x - y;
  return String(x).localeCompare(String(y));
}

// Two settings are tied when, across the cells, each value of one goes with one value of the
// other (depth and blocks_per_stage, one derived from the other): they vary as one axis.
function tied(flat, p, q) {
  const forth = new Map();
  const back = new Map();
  for (const { settings } of flat) {
    const a = settings[p] ?? "null";
    const b = settings[q] ?? "null";
    if ((forth.has(a) && forth.get(a) !== b) || (back.has(b) && back.get(b) !== a)) return false;
    forth.set(a, b);
    back.set(b, a);
  }
  return true;
}

function settingsOf(cells) {
  const flat = cells.map((c) => ({ cell: c, settings: flatten(c.spec) }));
  const paths = [...new Set(flat.flatMap((f) => Object.keys(f.settings)))];
  const varying = paths.filter((p) => new Set(flat.map((f) => f.settings[p] ?? "null")).size > 1)
    .sort((a, b) => axisRank(a) - axisRank(b) || a.localeCompare(b));
  // axes: [lead path, ...paths tied to it]; the lead names the axis
  const axes = [];
  for (const p of varying) {
    const axis = axes.find((paths) => tied(flat, paths[0], p));
    if (axis) axis.push(p);
    else axes.push([p]);
  }
  return { flat, paths, varying, axes };
}

// cells: [{experiment_id, name, spec}] -> [{axis, label, cells: [{experiment_id, name, value}]}]
export function seedComparisons(cells) {
  const { flat, paths, axes } = settingsOf(cells);
  const found = [];
  for (const [axis, ...alike] of axes) {
    const groups = new Map();
    for (const f of flat) {
      const rest = paths.filter((p) => p !== axis && !alike.includes(p))
        .map((p) => `${p}=${f.settings[p] ?? "null"}`).join("|");
      if (!groups.has(rest)) groups.set(rest, []);
      groups.get(rest).push(f);
    }
    for (const members of groups.values()) {
      if (new Set(members.map((f) => f.settings[axis] ?? "null")).size < 2) continue;
      const sorted = [...members].sort((a, b) => byValue(a.settings[axis] ?? "null", b.settings[axis] ?? "null"));
      found.push({ axis, label: axisLabel(axis),
        cells: sorted.map((f) => ({ experiment_id: f.cell.experiment_id, name: f.cell.name,
          value: JSON.parse(f.settings[axis] ?? "null") })) });
    }
  }
  return found;
}

const SWITCHES = new Set(["batch_norm", "residual"]);

// Cells alike but for the BatchNorm and residual switches (the seed's "same network, with and
// without the fixes"), each group labelled by the varying settings it holds ("depth 38").
export function siblingGroups(cells) {
  const { flat, paths, axes } = settingsOf(cells);
  const groups = new Map();
  for (const f of flat) {
    const key = paths.filter((p) => !SWITCHES.has(p)).map((p) => `${p}=${f.settings[p] ?? "null"}`).join("|");
    if (!groups.has(key)) {
      const label = axes.map(([lead]) => lead).filter((p) => !SWITCHES.has(p))
        .map((p) => `${axisLabel(p)} ${JSON.parse(f.settings[p] ?? "null")}`).join(", ");
      groups.set(key, { label, cells: [] });
    }
    groups.get(key).cells.push(f.cell);
  }
  return [...groups.values()];
}
