"""The web dashboard in a real headless Chromium (Debian's, driven by Playwright) against a
real API process: pages load without console errors, plotted values equal the API's numbers,
a live run's page moves without a reload, forms show the validator's errors inline.

Screenshots are kept under each test's temporary folder (``<tmp_path>/artifacts``); the compare
view has its own module (test_dashboard_compare.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import httpx

from tests.service.browser import Page, hover, legend_value
from tests.service.conftest import StoreWorker


def _experiment(api_url: str, spec: dict[str, object]) -> dict[str, object]:
    response = httpx.post(f"{api_url}/experiments", json=spec, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def _legend_value(page: object, chart: str, label: str) -> float:
    return float(legend_value(page, chart, label))


def test_experiment_page_plots_the_apis_numbers_without_console_errors(
    tab: Page, api_url: str, worker: StoreWorker,
    spec_factory: Callable[..., dict[str, object]],
) -> None:
    created = _experiment(api_url, spec_factory(seeds=(0, 1), epochs=3))
    for run in created["runs"]:
        worker.claim(run["id"])
        for epoch in range(3):
            worker.epoch(run["id"], run["seed"], epoch)
        worker.finish(run["id"])
    flow = httpx.get(f"{api_url}/experiments/{created['id']}/gradflow").json()
    metrics = httpx.get(f"{api_url}/experiments/{created['id']}/metrics").json()

    page = tab.open(f"experiments/{created['id']}")
    page.wait_for_selector("#gradflow-chart .uplot")
    page.wait_for_selector("#runs-table tbody tr")
    tab.docs_shot("experiment-page")
    # gradient flow: layer 2 at the last epoch, as the legend shows it under the mouse
    hover(page, "gradflow", 2)
    shown = _legend_value(page, "gradflow", "epoch 2")
    assert math.isclose(shown, flow["across_seeds"]["mean"][2][2], rel_tol=1e-4)
    assert page.inner_text("#gradflow-chart .u-legend") .count(flow["layers"][2]) == 1
    # curves: the mean training loss at epoch 1
    hover(page, "loss", 1)
    train_loss = _legend_value(page, "loss", "train loss")
    assert math.isclose(train_loss, metrics["across_seeds"]["mean"]["train_loss"][1],
                        rel_tol=1e-4)
    # heatmap: one cell per layer and epoch, with a tooltip naming layer, epoch and value
    canvas = page.locator("#gradflow-heatmap canvas")
    geometry = page.evaluate("() => { const h = window.__gradlab.charts.heatmap;"
                             " return {left: h.left, w: h.cell.w, h: h.cell.h}; }")
    canvas.hover(position={"x": geometry["left"] + geometry["w"] * 2 + 2,
                           "y": geometry["h"] * 0 + 2})
    assert page.inner_text("#gradflow-heatmap .tooltip").startswith(f"{flow['layers'][0]}, epoch 2")
    # the diagnostics in words (the test's gradients vanish towards the input)
    assert "vanishing_gradients" in page.inner_text("#findings")
    assert page.locator("#runs-table tbody tr").count() == 2
    links = [page.get_attribute(f".exports a:nth-of-type({i})", "href") for i in (1, 2)]
    assert "format=csv" in links[0] and "format=png" in links[1]
    # every run has finished: the header says so, and offers no cancel
    assert page.inner_text("#live") == "ended"
    assert page.locator("#cancel").count() == 0
    # the statistic selector reloads the view with the other statistic
    page.select_option("#stat", "max_abs")
    page.wait_for_function(
        "() => window.__gradlab.charts.gradflow.root.textContent.includes('max_abs')")
    tab.shot("experiment")
    assert tab.problems == []


def test_a_live_runs_page_updates_without_reload(
    tab: Page, api_url: str, worker: StoreWorker,
    spec_factory: Callable[..., dict[str, object]],
) -> None:
    created = _experiment(api_url, spec_factory(seeds=(5,), epochs=3))
    run_id = created["runs"][0]["id"]
    worker.claim(run_id)
    worker.epoch(run_id, 5, 0)
    page = tab.open(f"experiments/{created['id']}")
    page.wait_for_selector("#live.live-live")
    assert page.inner_text("#progress") == "1/3 epochs"
    page.evaluate("() => { window.__notReloaded = true; }")
    tab.shot("live-before")

    worker.epoch(run_id, 5, 1)
    page.wait_for_function("() => document.querySelector('#progress').textContent === '2/3 epochs'")
    page.wait_for_function("() => window.__gradlab.charts.loss.data[0].length === 2")
    assert "val loss" in page.inner_text("#current-loss")
    worker.epoch(run_id, 5, 2)
    worker.finish(run_id)
    page.wait_for_function(
        "() => document.querySelector('h1 .status').textContent === 'succeeded'")
    assert page.evaluate("() => window.__notReloaded") is True
    assert page.evaluate("() => window.__gradlab.charts.loss.data[0].length") == 3
    tab.shot("live-after")
    assert tab.problems == []


def test_front_page_shows_a_running_experiments_current_loss_and_eta(
    tab: Page, api_url: str, worker: StoreWorker,
    spec_factory: Callable[..., dict[str, object]],
) -> None:
    created = _experiment(api_url, spec_factory(seeds=(0, 1), epochs=3))
    first, second = (run["id"] for run in created["runs"])
    worker.claim(first)
    worker.epoch(first, 0, 0)  # 2.5 s
    worker.epoch(first, 0, 1)  # 3.5 s: mean 3 s an epoch, 4 of 6 epochs left, one run training
    listed = httpx.get(f"{api_url}/experiments", params={"limit": 100}).json()["items"]
    progress = next(e for e in listed if e["id"] == created["id"])["progress"]
    assert progress["epochs_done"] == 2 and progress["epochs_planned"] == 6
    assert math.isclose(progress["current_train_loss"], 4.6 - 0.3 * 1)
    assert progress["eta_seconds"] == 4 * 3.0

    page = tab.open("")
    row = f"#experiments tr[data-id='{created['id']}']"
    page.wait_for_selector(f"{row} .eta")
    assert page.inner_text(f"{row} .loss").strip() == "loss 4.300"
    assert page.inner_text(f"{row} .eta").strip() == "ETA ~12 s"
    tab.shot("front-page-live")

    worker.epoch(first, 0, 2)
    worker.finish(first)
    worker.claim(second)
    for epoch in range(3):
        worker.epoch(second, 1, epoch)
    worker.finish(second)
    listed = httpx.get(f"{api_url}/experiments", params={"limit": 100}).json()["items"]
    progress = next(e for e in listed if e["id"] == created["id"])["progress"]
    assert progress["current_train_loss"] is None and progress["eta_seconds"] is None
    page.reload()
    page.wait_for_selector(f"{row} .progress")
    assert page.locator(f"{row} .eta").count() == 0
    assert tab.problems == []


def test_study_page_matrix_siblings_report_resubmit_and_cancel(
    tab: Page, api_url: str, worker: StoreWorker, unique_name: str
) -> None:
    study = {"name": unique_name,
             "base": {"depth": 8, "width": 8, "hyperparameters": {"epochs": 2},
                      "data": {"train_limit": 200}},
             "grid": {"batch_norm": [False, True]}, "seeds": [11, 12]}
    created = httpx.post(f"{api_url}/studies", json=study, timeout=30).json()
    detail = httpx.get(f"{api_url}/studies/{created['id']}").json()
    run_ids = [(s["run_id"], s["seed"]) for c in detail["cells"] for s in c["seeds"]]
    for k, (run_id, seed) in enumerate(run_ids):
        worker.claim(run_id)
        for epoch in range(2):
            worker.epoch(run_id, seed, epoch)
        if k == 0:
            worker.finish(run_id, "failed", error="RuntimeError: out of memory")
        else:
            worker.finish(run_id)

    page = tab.open(f"studies/{created['id']}")
    page.on("dialog", lambda dialog: dialog.accept())
    page.wait_for_selector("#completion-matrix")
    page.wait_for_selector("#siblings .uplot")
    assert page.locator("#completion-matrix tbody tr").count() == 2
    assert page.locator("#siblings .sibling").count() == 2
    assert page.locator("#report-rows tbody tr").count() == 2
    # the report page itself, with its figures, in a frame
    # (matplotlib renders the report's figures: allow a busy machine a minute)
    page.frame_locator("#report-frame").locator("h2", has_text="Figures").wait_for(
        timeout=60_000)
    # and its figures are decoded pictures, not empty boxes
    frame = page.locator("#report-frame").element_handle().content_frame()
    frame.wait_for_function("() => document.images.length >= 2 && [...document.images]"
                            ".every((i) => i.complete && i.naturalWidth > 0)")
    # an ended study: nothing to cancel
    assert page.inner_text("#live") == "ended"
    assert page.locator("#cancel").is_disabled()
    tab.shot("study")

    page.click("#resubmit")
    page.wait_for_selector(f'#completion-matrix td[data-run="{run_ids[0][0]}"] .status-queued')
    assert httpx.get(f"{api_url}/studies/{created['id']}").json()["cells"][0]["seeds"][0][
        "status"] == "queued"
    page.click("#cancel")
    page.wait_for_selector(f'#completion-matrix td[data-run="{run_ids[0][0]}"] .status-cancelled')
    tab.shot("study-cancelled")
    assert tab.problems == []


def test_submit_form_shows_the_validators_errors_inline_then_submits(
    tab: Page, unique_name: str
) -> None:
    page = tab.open("submit")
    page.fill('[data-field="depth"]', "37")
    page.fill('[data-field="name"]', unique_name)
    page.click("#submit-fields")
    error = page.wait_for_selector('[data-error-for="depth"] div')
    assert "depth must be 6k+2" in error.inner_text()
    assert "invalid" in (page.get_attribute('[data-field="depth"]', "class") or "")
    tab.shot("submit-errors")

    page.fill("#spec-text", f"name: {unique_name}\ndepth: 8\nwidth: 8\nseeds: [0]\n"
                            "hyperparameters: {epochs: 1}\n")
    page.click("#submit-yaml")
    page.wait_for_url(re.compile(r".*#/experiments/[0-9a-f-]+$"))
    page.wait_for_selector("#runs-table")
    assert unique_name in page.inner_text("h1")
    # the browser logged the 422 it was answered; nothing else went wrong
    assert [p for p in tab.problems if "422" not in p] == []


def test_the_token_is_entered_once_sent_as_bearer_and_a_401_prompts_for_it(
    tab: Page, api_url: str
) -> None:
    page = tab.open("")
    page.wait_for_selector("#token-form")
    page.fill("#token", "t0ken-for-tests")
    page.click("#token-form button")
    with page.expect_request(lambda r: "/experiments?" in r.url) as seen:
        page.goto(f"{api_url}/#/")
    assert seen.value.headers.get("authorization") == "Bearer t0ken-for-tests"
    assert page.evaluate("() => sessionStorage.getItem('gradlab.token')") == "t0ken-for-tests"

    # This branch has no auth (another lands it): the server's 401 is stubbed here.
    page.route("**/experiments?*", lambda route: route.fulfill(
        status=401, content_type="application/json",
        body='{"type":"unauthorized","detail":"missing or invalid token"}'))
    page.goto(f"{api_url}/#/")
    page.wait_for_selector("#auth-prompt:not([hidden])")
    assert "401" in page.inner_text("#auth-prompt")
    tab.shot("auth-prompt")
