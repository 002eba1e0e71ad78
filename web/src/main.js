// The dashboard's entry: the token bar and a router over the part after "#".

import "uplot/dist/uPlot.min.css";
import "./style.css";
import { getToken, setToken } from "./api.js";
import { h } from "./dom.js";
import { comparePage } from "./compare.js";
import { experimentPage } from "./experiment.js";
import { homePage } from "./home.js";
import { studyPage } from "./study.js";
import { submitPage } from "./submit.js";

let leave = () => {};

function route() {
  leave();
  const main = document.getElementById("main");
  main.replaceChildren();
  const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const [kind, id] = path.split("/");
  if (kind === "compare") leave = comparePage(main, query);
  else if (kind === "experiments" && id) leave = experimentPage(main, id);
  else if (kind === "studies" && id) leave = studyPage(main, id);
  else if (kind === "submit") leave = submitPage(main);
  else leave = homePage(main);
}

function tokenBar() {
  const input = h("input", { id: "token", type: "password", placeholder: "API token", autocomplete: "off", value: getToken() });
  const form = h("form", { id: "token-form", onsubmit: (ev) => {
    ev.preventDefault();
    setToken(input.value.trim());
    document.getElementById("auth-prompt").hidden = true;
    route();
  } }, input, h("button", { type: "submit" }, getToken() ? "Change token" : "Use token"));
  document.getElementById("token-slot").replaceChildren(form);
  window.addEventListener("gradlab:unauthorised", () => {
    const prompt = document.getElementById("auth-prompt");
    prompt.hidden = false;
    prompt.textContent = getToken()
      ? "The server refused this token (401): enter another one above."
      : "This server needs a token (401): enter it above; it is kept for this tab only.";
    input.focus();
  });
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  tokenBar();
  route();
});
