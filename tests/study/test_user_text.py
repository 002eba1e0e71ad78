"""User text is never interpreted: names with matplotlib math, path separators or odd
characters render as typed, and report export file names are sanitised and unique."""

from __future__ import annotations

import io
import re
from pathlib import Path

from gradlab.science.gradflow_figure import plot_gradflow
from gradlab.science.report import build_report, render_html, write_report
from gradlab.science.report.writer import file_stems
from tests.study.builders import HEALTHY, LAYERS, cell, seed_run, spec

TRICKY = ["$\\frac{", "a/b", "a_b", "../../etc/passwd", "lr0.001", "lr0.002", "x" * 200,
          "caf\u00e9 \u2603 $x$", "CON", ".hidden"]


def test_math_in_a_name_is_drawn_as_text() -> None:
    figure = plot_gradflow(LAYERS, [0], [HEALTHY], title="$\\frac{ unbalanced $x^ {")
    figure.savefig(io.BytesIO(), format="png")  # would raise a mathtext ParseException


def test_a_report_of_cells_with_tricky_names_renders_and_writes_safe_unique_files(
    tmp_path: Path,
) -> None:
    cells = [
        cell(spec(name, 8, **{"hyperparameters.weight_decay": 0.001 * i}),
             seed_run(0, train_loss=[4.0, 3.5], gradients=[HEALTHY] * 2, layers=LAYERS))
        for i, name in enumerate(TRICKY)
    ]
    report = build_report("tricky $study$", cells, scale="smoke", with_figures=True)
    assert "$\\frac{" in render_html(report)
    out = tmp_path / "report"
    write_report(report, out)
    written = sorted(p.name for p in (out / "figures").iterdir())
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in written), written
    assert all(len(name) <= 100 for name in written)
    assert not any(p.is_dir() for p in (out / "figures").iterdir())
    stems = {name.rsplit(".", 1)[0] for name in written}
    assert len(stems) == len(report.figures)  # one stem per figure: nothing overwritten
    assert not (tmp_path / "etc").exists()


def test_file_stems_are_unique_even_when_names_clean_up_the_same() -> None:
    stems = file_stems(["a/b", "a_b", "a?b", "A_B", "curves"])
    assert stems["curves"] == "curves"
    assert len({s.lower() for s in stems.values()}) == 5
