"""The compare view and the study page's comparisons in a real headless Chromium (Debian's,
through Playwright) against a real API process.

- Two experiments of different depth (VGG08 and VGG38) picked on the front page open side by
  side; every layer of each, at every epoch, is drawn at the API's number (read under the real
  mouse from the chart's legend), the seed band spans the seeds' values, the curves hold the
  API's means, the table its final metrics; the selection survives a reload (the URL holds it).
- The seed study at smoke scale offers the seed report's comparisons (depth, BatchNorm on/off,
  residual on/off, the weight-decay cells), each of which opens the compare view with exactly
  its cells; its per-cell charts share their axes; an ended study says "ended", cannot be
  cancelled, and a one-seed cell prints its value without "+- 0". (That the report's figures
  show is test_dashboard.py's, on a smaller study: the server draws the seed study's twenty
  figures for about a minute on a busy machine.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import yaml

from gradlab.science.layers import layer_names
from gradlab.science.records import GRADFLOW_STATS, EpochMetrics, GradFlowEpoch
from gradlab.science.spec import ExperimentSpec
from tests.service.browser import Page, hover, legend_value
from tests.service.conftest import StoreWorker, gradflow_numbers
from tests.support.processes import REPO

EPOCHS = 3
SEEDS = (0, 1)


def _vgg_flow(layers: list[str], deep: bool, seed: int, epoch: int) -> GradFlowEpoch:
    """Seed-report-shaped gradients: VGG08's between 1e-3 and 4e-2 (the course figure's),
    VGG38's vanishing from 1e-14 at the input to 1e-4 at the output."""
    values = []
    for j in range(len(layers)):
        x = j / (len(layers) - 1)
        exponent = -14 + 10 * x if deep else -1.4 - 3.8 * x + 3.2 * x * x
        values.append(10.0 ** exponent * (1 + 0.3 * seed) * (1 + 0.2 * epoch))
    stats = {s: [v * (k + 1) for v in values] for k, s in enumerate(GRADFLOW_STATS)}
    return GradFlowEpoch(epoch=epoch, layers=tuple(layers), last_batch=stats, epoch_mean=stats)


def _vgg_metrics(deep: bool, seed: int, epoch: int) -> EpochMetrics:
    """VGG08 learns; VGG38 sits at ln(100), as in the seed report."""
    if deep:
        return EpochMetrics(epoch=epoch, train_loss=4.605 + 0.001 * seed, train_acc=0.01,
                            val_loss=4.606 - 0.001 * seed, val_acc=0.009 + 0.001 * seed,
                            lr=1e-3, seconds=30.0)
    return EpochMetrics(epoch=epoch, train_loss=4.2 - 0.5 * epoch - 0.05 * seed,
                        train_acc=0.06 + 0.08 * epoch + 0.01 * seed,
                        val_loss=4.3 - 0.4 * epoch - 0.04 * seed,
                        val_acc=0.05 + 0.07 * epoch + 0.012 * seed, lr=1e-3, seconds=4.0)


def _train(api_url: str, worker: StoreWorker, spec: dict[str, Any]) -> dict[str, Any]:
    """Submit ``spec`` and play its runs through every epoch to success."""
    created = httpx.post(f"{api_url}/experiments", json=spec, timeout=30)
    assert created.status_code == 201, created.text
    experiment = created.json()
    deep = spec["depth"] > 8
    layers = layer_names(ExperimentSpec.model_validate(spec))
    for run in experiment["runs"]:
        worker.claim(run["id"])
        for epoch in range(EPOCHS):
            worker.epoch(run["id"], run["seed"], epoch,
                         metrics=_vgg_metrics(deep, run["seed"], epoch),
                         gradflow=_vgg_flow(layers, deep, run["seed"], epoch))
        worker.finish(run["id"])
    return experiment


def _wait_ready(page: Any, after: str | None = None) -> str:
    """Wait until the compare view has drawn a selection (a newer one than ``after``)."""
    page.wait_for_function(
        "(after) => { const p = document.querySelector('#compare-page');"
        " return p && p.dataset.ready && p.dataset.ready !== after; }", arg=after)
    return str(page.get_attribute("#compare-page", "data-ready"))


def _check_flow_drawn(page: Any, names: list[str], flows: list[dict[str, Any]],
                      epoch_index: int) -> None:
    """Under the mouse, each network's every layer reads the API's mean across seeds."""
    for name, flow in zip(names, flows, strict=True):
        layers = flow["layers"]
        for j, layer in enumerate(layers):
            hover(page, "compare-gradflow", j / (len(layers) - 1))
            text = legend_value(page, "compare-gradflow", name)
            value, _, shown_layer = text.partition(" at ")
            assert shown_layer == layer, (name, j, text)
            expected = flow["across_seeds"]["mean"][epoch_index][j]
            assert math.isclose(float(value), expected, rel_tol=1e-4), (name, layer, text)


def _series(page: Any, chart: str) -> list[dict[str, Any]]:
    """A chart's series labels and the numbers it holds (undefined read back as null)."""
    return list(page.evaluate(
        """(chart) => { const u = window.__gradlab.charts[chart];
            return u.series.map((s, i) => ({label: s.label,
              data: Array.from(u.data[i], (v) => (v === undefined ? 'skip' : v))})); }""",
        chart))


def test_compare_view_overlays_two_depths_at_the_apis_numbers_and_survives_a_reload(
    tab: Page, api_url: str, worker: StoreWorker, unique_name: str,
    spec_factory: Callable[..., dict[str, object]],
) -> None:
    names = [f"vgg08-{unique_name[-4:]}", f"vgg38-{unique_name[-4:]}"]
    shallow = _train(api_url, worker, spec_factory(seeds=SEEDS, epochs=EPOCHS, depth=8,
                                                   name=names[0]))
    deep = _train(api_url, worker, spec_factory(seeds=SEEDS, epochs=EPOCHS, depth=38,
                                                name=names[1]))
    ids = [shallow["id"], deep["id"]]
    flows = [httpx.get(f"{api_url}/experiments/{i}/gradflow").json() for i in ids]
    metrics = [httpx.get(f"{api_url}/experiments/{i}/metrics").json() for i in ids]
    assert [len(f["layers"]) for f in flows] == [9, 39]

    # picked on the front page: the button acts only once two are ticked
    page = tab.open("")
    button = page.locator("#compare-selected")
    page.check(f"#experiments tr[data-id='{ids[0]}'] input.pick")
    assert button.is_disabled()
    page.check(f"#experiments tr[data-id='{ids[1]}'] input.pick")
    button.click()
    ready = _wait_ready(page)
    assert f"ids={ids[0]},{ids[1]}" in page.url

    # gradient flow: one line per network on one relative-depth axis, every layer at every
    # epoch at the API's number (the default is each one's last epoch)
    labels = [s["label"] for s in _series(page, "compare-gradflow")]
    assert [x for x in labels if x in names] == names
    _check_flow_drawn(page, names, flows, EPOCHS - 1)
    for epoch in range(EPOCHS):
        page.select_option("#compare-epoch", str(epoch))
        page.wait_for_function(
            f"() => window.__gradlab.charts['compare-gradflow'].root.textContent"
            f".includes('epoch {epoch}')")
        _check_flow_drawn(page, names, flows, epoch)
        assert f"epoch={epoch}" in page.url
    # the band spans the seeds' values (epoch 2 is shown now): min and max per layer
    series = _series(page, "compare-gradflow")
    for name, flow in zip(names, flows, strict=True):
        k = next(i for i, s in enumerate(series) if s["label"] == name)
        hi, lo = ([v for v in series[k + d]["data"] if v != "skip"] for d in (1, 2))
        per_seed = [run["values"][EPOCHS - 1] for run in flow["runs"]]
        assert hi == pytest.approx([max(v) for v in zip(*per_seed, strict=True)], rel=1e-12)
        assert lo == pytest.approx([min(v) for v in zip(*per_seed, strict=True)], rel=1e-12)

    # curves: each network's mean across seeds, every epoch, in the four panels
    for metric in ("train_loss", "val_loss", "train_acc", "val_acc"):
        drawn = {s["label"]: s["data"] for s in _series(page, f"compare-{metric}")}
        for name, m in zip(names, metrics, strict=True):
            assert drawn[name] == pytest.approx(m["across_seeds"]["mean"][metric], rel=1e-12)
    # the final metrics table: mean +- std (n) of each, accuracies as percentages
    for i, name in zip(ids, names, strict=True):
        final = httpx.get(f"{api_url}/experiments/{i}").json()["summary"]["metrics"]
        val_acc = final["final_val_acc"]
        cell = f"#compare-final tr[data-id='{i}'] td[data-metric='final_val_acc']"
        shown = page.inner_text(cell)
        assert shown == (f"{100 * val_acc['mean']:.1f} +- {100 * val_acc['std']:.1f} % (n=2)")
        loss = final["final_train_loss"]["mean"]
        shown = page.inner_text(
            f"#compare-final tr[data-id='{i}'] td[data-metric='final_train_loss']")
        assert shown.startswith(f"{loss:.3f} +- "), (name, shown)
    page.select_option("#compare-epoch", "last")
    page.wait_for_function("() => window.__gradlab.charts['compare-gradflow'].root.textContent"
                           ".includes('last epoch of each')")
    tab.docs_shot("compare-view")
    tab.shot("compare")

    # another statistic and epoch, then a reload: the URL brought everything back
    page.select_option("#compare-stat", "max_abs")
    ready = _wait_ready(page, ready)
    page.select_option("#compare-epoch", "1")
    assert re.search(r"[?&]stat=max_abs(&|$)", page.url) and "epoch=1" in page.url
    page.reload()
    _wait_ready(page)
    assert page.input_value("#compare-stat") == "max_abs"
    assert page.input_value("#compare-epoch") == "1"
    maxima = [httpx.get(f"{api_url}/experiments/{i}/gradflow", params={"stat": "max_abs"}).json()
              for i in ids]
    _check_flow_drawn(page, names, maxima, 1)
    assert [c.get_attribute("data-id") for c in page.locator(".chip").all()] == ids
    assert tab.problems == []


def _seed_study(unique_name: str) -> dict[str, Any]:
    study = yaml.safe_load((REPO / "examples" / "seed-study.yaml").read_text())
    return {**study, "name": unique_name, "scale": "smoke"}


def _play_study(api_url: str, worker: StoreWorker, study_id: str) -> dict[str, Any]:
    """Every run of every cell through its epochs (the cells' own layers), to success."""
    detail = httpx.get(f"{api_url}/studies/{study_id}").json()
    for cell in detail["cells"]:
        spec = httpx.get(f"{api_url}/experiments/{cell['experiment_id']}").json()["spec"]
        layers = tuple(layer_names(ExperimentSpec.model_validate(spec)))
        for seat in cell["seeds"]:
            worker.claim(seat["run_id"])
            for epoch in range(2):
                worker.epoch(seat["run_id"], seat["seed"], epoch,
                             gradflow=gradflow_numbers(seat["seed"], epoch, layers))
            worker.finish(seat["run_id"])
    return detail


SEED_COMPARISONS = {
    ("depth", ("vgg08", "vgg38")),
    ("depth", ("vgg08-bn", "vgg38-bn")),
    ("batch_norm", ("vgg08", "vgg08-bn")),
    ("batch_norm", ("vgg38", "vgg38-bn")),
    ("residual", ("vgg38-bn", "vgg38-bn-res")),
    ("hyperparameters.weight_decay",
     ("vgg38-bn-res", "vgg38-bn-res-wd1e-4", "vgg38-bn-res-wd1e-3", "vgg38-bn-res-wd1e-2")),
}


def test_the_smoke_studys_page_offers_the_seeds_comparisons_on_shared_axes(
    tab: Page, api_url: str, worker: StoreWorker, unique_name: str,
) -> None:
    created = httpx.post(f"{api_url}/studies", json=_seed_study(unique_name), timeout=60)
    assert created.status_code == 201, created.text
    study_id = created.json()["id"]
    detail = _play_study(api_url, worker, study_id)
    by_name = {c["name"]: c["experiment_id"] for c in detail["cells"]}

    page = tab.open(f"studies/{study_id}")
    page.wait_for_selector("#seed-comparisons li")
    page.wait_for_selector("#siblings .uplot")
    offered = {(li.get_attribute("data-axis"),
                tuple(li.inner_text().split(": ", 1)[1].split(" vs ")))
               for li in page.locator("#seed-comparisons li").all()}
    assert offered == SEED_COMPARISONS

    # every cell's chart on the same axes: x from input to output, one y range
    page.wait_for_function(f"() => document.querySelectorAll('#siblings .sibling .uplot')"
                           f".length === {len(detail['cells'])}")
    scales = page.evaluate(
        """() => Object.entries(window.__gradlab.charts).filter(([k]) => k.startsWith('sibling-'))
            .map(([, u]) => [u.scales.x.min, u.scales.x.max, u.scales.y.min, u.scales.y.max])""")
    assert len(scales) == len(detail["cells"])
    assert all(s == scales[0] for s in scales)
    assert scales[0][0] < 0 and scales[0][1] > 1  # input and output at 0 and 1, inside

    # polish: ended, nothing to cancel, one seed prints its value alone
    assert page.inner_text("#live") == "ended"
    assert page.locator("#cancel").is_disabled()
    row = page.locator("#report-rows tbody tr", has_text="vgg08-bn").first
    assert re.fullmatch(r"\d+\.\d %", row.locator("td[data-metric='val_acc']").inner_text())
    four = page.locator("#report-rows tbody tr", has_text="vgg38-bn-res-wd1e-3")
    assert four.locator("td[data-metric='val_acc']").inner_text().endswith("(n=4)")

    tab.shot("study")

    # each comparison opens the compare view with exactly its cells
    for axis, cells in sorted(SEED_COMPARISONS):
        links = page.locator(f"#seed-comparisons li[data-axis='{axis}'] a").all()
        link = next(a for a in links if a.inner_text().endswith(": " + " vs ".join(cells)))
        link.click()
        _wait_ready(page)
        assert [c.get_attribute("data-id") for c in page.locator(".chip").all()] == [
            by_name[c] for c in cells]
        drawn = [s["label"] for s in _series(page, "compare-gradflow")]
        assert [x for x in drawn if x in cells] == list(cells)
        page.go_back()
        page.wait_for_selector("#seed-comparisons li")
    assert tab.problems == []
