"""The report's weight-decay comparison: training and validation loss of cells that differ only
by weight decay, and its exports are what it draws."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from gradlab.science.report import build_report, write_report
from gradlab.science.report.figures import weight_decay_figure, weight_decay_groups
from tests.study.builders import cell, seed_run, spec

TRAIN = [3.0, 2.5, 2.0, 1.5]


def res(name: str, weight_decay: float, **extra: object) -> object:
    return spec(name, 38, bn=True, res=True,
                **{"hyperparameters.weight_decay": weight_decay, **extra})


def study() -> list:
    return [
        cell(spec("vgg08", 8), seed_run(0, train_loss=TRAIN)),
        cell(res("res-wd1e-3", 1e-3),
             seed_run(0, train_loss=TRAIN, val_loss=[3.1, 2.8, 2.6, 2.5]),
             seed_run(1, train_loss=[3.2, 2.7, 2.2, 1.7], val_loss=[3.3, 3.0, 2.8, 2.7])),
        cell(res("res", 0.0), seed_run(0, train_loss=TRAIN, val_loss=[3.1, 2.8, 2.9, 3.3])),
        cell(res("res-lr", 1e-3, **{"hyperparameters.learning_rate": 0.01}),
             seed_run(0, train_loss=TRAIN)),  # differs by more than weight decay
    ]


def test_siblings_by_weight_decay_are_grouped_without_decay_first() -> None:
    groups = weight_decay_groups(study())
    assert [[c.name for c in g] for g in groups] == [["res", "res-wd1e-3"]]
    # decay only, no cell without it: nothing to compare against
    only_decay = [c for c in study() if c.name != "res"]
    assert weight_decay_groups(only_decay) == []


def test_the_report_draws_training_and_validation_loss_per_weight_decay(tmp_path: Path) -> None:
    report = build_report("wd", study())
    figure = next(f for f in report.figures if f.name.startswith("weight-decay-"))
    assert figure.name == "weight-decay-res"
    assert sum(f.name.startswith("weight-decay-") for f in report.figures) == 1
    write_report(report, tmp_path)
    exported = json.loads((tmp_path / "figures" / "weight-decay-res.json").read_text())
    assert [c["name"] for c in exported["cells"]] == ["res", "res-wd1e-3"]
    assert [c["weight_decay"] for c in exported["cells"]] == [0.0, 1e-3]
    lines = figure.figure.axes[0].get_lines()
    assert [line.get_label() for line in lines] == [
        "0 train", "0 val", "0.001 train", "0.001 val"]
    assert [line.get_linestyle() for line in lines] == ["-", "--", "-", "--"]
    drawn = iter(lines)
    for entry in exported["cells"]:
        for metric in ("train_loss", "val_loss"):
            line = next(drawn)
            assert list(line.get_xdata()) == entry[metric]["epochs"]
            assert list(line.get_ydata()) == entry[metric]["mean"]
    # the decayed cell's lines are the mean over its two seeds
    assert exported["cells"][1]["val_loss"]["mean"] == [3.2, 2.9, 2.7, 2.6]
    assert exported["cells"][1]["val_loss"]["n"] == [2, 2, 2, 2]
    with (tmp_path / "figures" / "weight-decay-res.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * 4  # cells x metrics x epochs
    assert (tmp_path / "figures" / "weight-decay-res.png").stat().st_size > 0


def test_no_figure_for_a_group_with_one_drawable_cell() -> None:
    cells = study()
    empty = cells[1]
    empty = type(empty)(empty.name, {}, empty.spec, [], parameters=None)  # nothing run yet
    assert weight_decay_figure([cells[2], empty]) is None
    assert not any(f.name.startswith("weight-decay-") for f in build_report("wd", [cells[2],
                                                                                 empty]).figures)
