// Submit an experiment from fields, or an experiment or study from YAML/JSON; the server's
// validator errors are shown next to the field they name.

import { load as loadYaml } from "js-yaml";
import { post } from "./api.js";
import { h } from "./dom.js";

const STUDY_KEYS = ["grid", "experiments", "base"];

const FIELDS = [
  ["name", "name", "text", "vgg38-bn-res"],
  ["depth", "depth (6k+2)", "number", 38],
  ["width", "width", "number", 32],
  ["batch_norm", "BatchNorm", "checkbox", true],
  ["residual", "residual", "checkbox", true],
  ["hyperparameters.optimizer", "optimizer", "text", "adam"],
  ["hyperparameters.learning_rate", "learning rate", "number", 0.001],
  ["hyperparameters.weight_decay", "weight decay", "number", 0],
  ["hyperparameters.batch_size", "batch size", "number", 100],
  ["hyperparameters.epochs", "epochs", "number", 100],
  ["data.train_limit", "train images (empty = all)", "number", ""],
  ["seeds", "seeds (comma-separated)", "text", "0, 256, 512, 1024"],
];

function fieldsToSpec(form) {
  const spec = {};
  for (const [path, , type] of FIELDS) {
    const input = form.querySelector(`[data-field="${path}"]`);
    let value;
    if (type === "checkbox") value = input.checked;
    else if (path === "seeds") value = input.value.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
    else if (type === "number") value = input.value === "" ? null : Number(input.value);
    else value = input.value;
    const parts = path.split(".");
    let node = spec;
    parts.slice(0, -1).forEach((p) => { node = node[p] = node[p] || {}; });
    node[parts[parts.length - 1]] = value;
  }
  return spec;
}

export function submitPage(root) {
  const general = h("ul", { id: "form-errors", class: "errors" });
  const fields = h("form", { id: "spec-fields", class: "spec-form" },
    FIELDS.map(([path, label, type, value]) => h("div", { class: "field" },
      h("label", {}, label, " ",
        h("input", { type, "data-field": path, name: path, ...(type === "checkbox" ? { checked: value } : { value, step: type === "number" ? "any" : null }) })),
      h("div", { class: "field-error", "data-error-for": path }))),
    h("button", { type: "submit", id: "submit-fields" }, "Submit experiment"));
  const text = h("textarea", { id: "spec-text", rows: 16, spellcheck: "false",
    placeholder: "name: vgg08\ndepth: 8\nseeds: [0, 1]\n# or a study: name, base, grid, seeds" });
  const textForm = h("form", { id: "spec-yaml", class: "spec-form" }, text,
    h("div", { class: "field-error", "data-error-for": "yaml" }),
    h("button", { type: "submit", id: "submit-yaml" }, "Submit YAML / JSON"));

  function clearErrors() {
    general.replaceChildren();
    root.querySelectorAll(".field-error").forEach((e) => e.replaceChildren());
    root.querySelectorAll(".invalid").forEach((e) => e.classList.remove("invalid"));
  }

  function showErrors(error, form) {
    const problems = error.errors && error.errors.length ? error.errors : [{ field: "", reason: error.message }];
    for (const p of problems) {
      const slot = form.querySelector(`[data-error-for="${CSS.escape(p.field)}"]`);
      if (slot) {
        slot.append(h("div", {}, p.reason));
        const input = form.querySelector(`[data-field="${CSS.escape(p.field)}"]`);
        if (input) input.classList.add("invalid");
      } else {
        general.append(h("li", {}, p.field ? `${p.field}: ${p.reason}` : p.reason));
      }
    }
  }

  async function send(spec, form) {
    clearErrors();
    const isStudy = STUDY_KEYS.some((k) => k in spec);
    try {
      const created = await post(isStudy ? "studies" : "experiments", spec);
      location.hash = isStudy ? `#/studies/${created.id}` : `#/experiments/${created.id}`;
    } catch (error) {
      showErrors(error, form);
    }
  }

  fields.addEventListener("submit", (ev) => { ev.preventDefault(); send(fieldsToSpec(fields), fields); });
  textForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearErrors();
    let spec;
    try {
      spec = loadYaml(text.value);
    } catch (error) {
      textForm.querySelector('[data-error-for="yaml"]').append(h("div", {}, `not YAML: ${error.message.split("\n")[0]}`));
      return;
    }
    if (!spec || typeof spec !== "object" || Array.isArray(spec)) {
      textForm.querySelector('[data-error-for="yaml"]').append(h("div", {}, "a spec is a mapping of fields"));
      return;
    }
    send(spec, textForm);
  });

  root.replaceChildren(h("h1", {}, "Submit"), general,
    h("div", { class: "grid2" },
      h("section", {}, h("h2", {}, "An experiment from fields"), fields),
      h("section", {}, h("h2", {}, "An experiment or a study from YAML or JSON"), textForm)));
  return () => {};
}
