"""The report: renders with partial results, and its exports are exactly what is plotted."""

from __future__ import annotations

import base64
import csv
import json
import math
from pathlib import Path

import pytest

from gradlab.science.report import build_report, render_html, write_report
from gradlab.science.report.figures import PlotFigure
from tests.study.builders import HEALTHY, LAYERS, VANISHED, cell, seed_run, spec

FLAT = [4.606, 4.605, 4.605]


def partial_study() -> list:
    """A study caught mid-way: finished, running, missing seeds, and a cell not started."""
    plain = cell(
        spec("vgg38", 38),
        seed_run(0, train_loss=FLAT, train_acc=[0.01] * 3, gradients=[VANISHED] * 3, layers=LAYERS),
    )
    bn_spec = spec("vgg38-bn", 38, bn=True).with_updates({"seeds": [0, 1, 2]})
    bn = cell(
        bn_spec,
        seed_run(
            0,
            train_loss=[4.2, 3.6, 3.2],
            train_acc=[0.06, 0.14, 0.22],
            gradients=[HEALTHY] * 3,
            layers=LAYERS,
        ),
        seed_run(
            1,
            train_loss=[4.3],
            train_acc=[0.05],
            gradients=[HEALTHY],
            layers=LAYERS,
            status="running",
        ),
    )
    bn = type(bn)(bn.name, bn.coordinates, bn_spec, bn.runs, parameters=None)  # seed 2 missing
    res = cell(spec("vgg38-bn-res", 38, bn=True, res=True))  # nothing yet
    res = type(res)(res.name, res.coordinates, res.spec, [], parameters=None)
    return [plain, bn, res]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    report = build_report("partial", partial_study(), scale="smoke")
    out = tmp_path_factory.mktemp("report")
    write_report(report, out)
    return out, report


def test_partial_results_render_with_completion_and_counts(report_dir: tuple) -> None:
    out, report = report_dir
    data = json.loads((out / "report.json").read_text())
    assert data["complete"] is False
    assert data["runs_planned"] == 5 and data["runs_finished"] == 2
    statuses = {(c["cell"], c["seed"]): c["status"] for c in data["completion"]}
    assert statuses == {
        ("vgg38", 0): "succeeded",
        ("vgg38-bn", 0): "succeeded",
        ("vgg38-bn", 1): "running",
        ("vgg38-bn", 2): "missing",
        ("vgg38-bn-res", 0): "missing",
    }
    rows = {r["name"]: r for r in data["table"]}
    assert rows["vgg38-bn"]["train_acc"]["n"] == 2  # last finished epoch of both seeds
    assert rows["vgg38-bn"]["test_acc"]["n"] == 0
    assert rows["vgg38-bn-res"]["train_acc"] == {"mean": None, "std": None, "n": 0}
    assert rows["vgg38"]["parameters"] == 1000
    assert rows["vgg38-bn"]["parameters"] == 338_500  # counted from the model when not given
    page = (out / "report.html").read_text()
    assert "Partial results" in page and "missing" in page


def test_findings_have_kind_experiments_sentence_and_evidence(report_dir: tuple) -> None:
    out, _ = report_dir
    findings = json.loads((out / "report.json").read_text())["findings"]
    kinds = [f["kind"] for f in findings]
    assert "vanishing_gradients" in kinds and "not_training" in kinds and "fix" in kinds
    for f in findings:
        assert f["sentence"] and isinstance(f["evidence"], dict)
        for ref in f["experiments"]:
            assert set(ref) == {"name", "depth", "batch_norm", "residual"}
    vanishing = next(f for f in findings if f["kind"] == "vanishing_gradients")
    assert vanishing["experiments"][0] == {
        "name": "vgg38",
        "depth": 38,
        "batch_norm": False,
        "residual": False,
    }


def test_html_is_self_contained(report_dir: tuple) -> None:
    out, report = report_dir
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(report.figures)
    assert "<img alt" in page and "src='figures/" not in page
    assert render_html(report).count("data:image/png;base64,") == len(report.figures)


def test_each_figure_is_drawn_once_per_format_and_the_page_shows_the_png_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Drawing a figure costs more than the rest of the report: the page embeds the PNG file's
    bytes instead of drawing the figure again."""
    report = build_report("partial", partial_study(), scale="smoke")
    drawn: list[tuple[str, str]] = []
    for fig in report.figures:
        def savefig(target: object, *, format: str, _fig: PlotFigure = fig,
                    _save: object = fig.figure.savefig) -> None:
            drawn.append((_fig.name, format))
            _save(target, format=format)  # type: ignore[operator]
        monkeypatch.setattr(fig.figure, "savefig", savefig)
    write_report(report, tmp_path)
    assert sorted(drawn) == sorted((f.name, kind) for f in report.figures
                                   for kind in ("png", "svg"))
    page = (tmp_path / "report.html").read_text()
    for png in (tmp_path / "figures").glob("*.png"):
        assert base64.b64encode(png.read_bytes()).decode("ascii") in page


def _lines(fig: PlotFigure) -> list:
    return [
        line
        for ax in fig.figure.axes
        for line in ax.get_lines()
        if not line.get_label().startswith("_")
    ]


def test_curve_exports_equal_the_plotted_lines(report_dir: tuple) -> None:
    out, report = report_dir
    curves = next(f for f in report.figures if f.name == "curves")
    exported = json.loads((out / "figures" / "curves.json").read_text())
    metrics = ["train_acc", "val_acc", "train_loss", "val_loss"]
    for ax, metric in zip(curves.figure.axes, metrics, strict=True):
        plotted = {line.get_label(): line for line in ax.get_lines()}
        assert set(plotted) == set(exported["metrics"][metric]) == {"vgg38", "vgg38-bn"}
        for name, series in exported["metrics"][metric].items():
            assert list(plotted[name].get_xdata()) == series["epochs"]
            assert list(plotted[name].get_ydata()) == series["mean"]
        # the band is mean -+ std: its vertices hold exactly those numbers
        for band, (name, series) in zip(
            ax.collections, exported["metrics"][metric].items(), strict=True
        ):
            ys = set(band.get_paths()[0].vertices[:, 1].tolist())
            expected = {m - s for m, s in zip(series["mean"], series["std"], strict=True)}
            expected |= {m + s for m, s in zip(series["mean"], series["std"], strict=True)}
            assert expected <= ys, name
    with (out / "figures" / "curves.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    bn_acc = [r for r in rows if r["cell"] == "vgg38-bn" and r["metric"] == "train_acc"]
    assert [float(r["mean"]) for r in bn_acc] == exported["metrics"]["train_acc"]["vgg38-bn"][
        "mean"
    ]


def test_gradflow_and_heatmap_exports_equal_what_is_drawn(report_dir: tuple) -> None:
    out, report = report_dir
    for fig in report.figures:
        if fig.name.startswith("gradflow-"):
            exported = json.loads((out / "figures" / f"{fig.name}.json").read_text())
            lines = _lines(fig)
            assert [line.get_label() for line in lines] == [
                f"epoch {e}" for e in exported["epochs"]
            ]
            for line, row in zip(lines, exported["mean"], strict=True):
                assert list(line.get_ydata()) == row  # all positive: nothing hidden by log
        if fig.name.startswith("heatmap-"):
            exported = json.loads((out / "figures" / f"{fig.name}.json").read_text())
            image = fig.figure.axes[0].images[0].get_array()
            for j, layer in enumerate(exported["layers"]):
                for i, _ in enumerate(exported["epochs"]):
                    assert image[j][i] == math.log10(exported["mean"][i][j]), layer
    names = [f.name for f in report.figures]
    assert "gradflow-vgg38" in names and "heatmap-vgg38-bn" in names
    assert "compare-vgg38-vs-vgg38-bn" in names  # plain vs BN side by side
    assert all((out / "figures" / f"{n}.svg").exists() for n in names)


def test_an_empty_study_still_renders(tmp_path: Path) -> None:
    empty = cell(spec("nothing"))
    empty = type(empty)(empty.name, {}, empty.spec, [], parameters=None)
    html = write_report(build_report("empty", [empty]), tmp_path)
    assert "No diagnostic fired" in html.read_text()
    assert json.loads((tmp_path / "report.json").read_text())["findings"] == []


def test_reproducibility_section_says_which_runs_trained_in_which_pack() -> None:
    import dataclasses

    study = partial_study()
    bn = study[1]
    packed = [dataclasses.replace(run, pack="p1") for run in bn.runs]
    study[1] = type(bn)(bn.name, bn.coordinates, bn.spec, packed, parameters=None)
    report = build_report("packed", study, scale="smoke", with_figures=False)
    rows = {(r["cell"], r["seed"]): (r["pack"], r["pack_size"]) for r in report.reproducibility()}
    assert rows == {("vgg38", 0): (None, None), ("vgg38-bn", 0): ("p1", 2),
                    ("vgg38-bn", 1): ("p1", 2)}  # missing runs are not listed
    assert report.to_json_dict()["reproducibility"] == report.reproducibility()
    page = render_html(report)
    assert "<h2>Reproducibility</h2>" in page
    assert "pack p1 (2 runs)" in page and "<td>alone</td>" in page


def test_each_cell_and_run_says_its_precision_and_a_mixed_cell_says_so() -> None:
    import dataclasses

    study = partial_study()
    plain, bn = study[0], study[1]
    study[0] = dataclasses.replace(plain, runs=[dataclasses.replace(plain.runs[0],
                                                                    precision="bf16")])
    study[1] = dataclasses.replace(bn, runs=[dataclasses.replace(r, precision=p)
                                             for r, p in zip(bn.runs, ("bf16", "fp32"),
                                                             strict=True)])
    report = build_report("precisions", study, scale="smoke", with_figures=False)
    cells = {row.name: row.precision for row in report.rows}
    assert cells == {"vgg38": "bf16", "vgg38-bn": "mixed (bf16 x1, fp32 x1)",
                     **{r.name: None for r in report.rows[2:]}}  # cells not started
    rows = {(r["cell"], r["seed"]): r["precision"] for r in report.reproducibility()}
    assert rows == {("vgg38", 0): "bf16", ("vgg38-bn", 0): "bf16", ("vgg38-bn", 1): "fp32"}
    table = report.to_json_dict()["table"]
    assert [t["precision"] for t in table[:2]] == ["bf16", "mixed (bf16 x1, fp32 x1)"]
    page = render_html(report)
    assert "mixed (bf16 x1, fp32 x1)" in page and "<th>precision</th>" in page
