"""Write a report to a folder: report.html, report.json, table.csv and figures/*."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

from gradlab.science.json_values import json_safe
from gradlab.science.report.build import Report
from gradlab.science.report.html import figure_png, render_html
from gradlab.science.report.tables import table_csv

# Figure names hold cell names (user text): as file names they keep only these characters,
# stay short enough for any file system, and never collide.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_STEM_LENGTH = 80


def file_stems(names: Sequence[str]) -> dict[str, str]:
    """A safe, unique file stem for each figure name (letters, digits, ``.``, ``_``, ``-``)."""
    stems: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        stem = _UNSAFE.sub("_", name).strip("._-")[:MAX_STEM_LENGTH] or "figure"
        if stem != name or stem.lower() in taken:
            # a short hash of the real name tells apart names that clean up the same
            stem = f"{stem}-{hashlib.sha256(name.encode('utf-8', 'replace')).hexdigest()[:8]}"
        while stem.lower() in taken:  # same hash prefix: vanishingly rare, still handled
            stem += "_"
        taken.add(stem.lower())
        stems[name] = stem
    return stems


def write_report(report: Report, out_dir: Path, *, svg: bool = True) -> Path:
    """Write everything; returns the path of ``report.html``. Closes nothing the caller needs
    (the figures keep the layout they were drawn with)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(exist_ok=True)
    files: dict[str, dict[str, str]] = {}
    pngs: dict[str, bytes] = {}  # drawn once, for the file and the page
    stems = file_stems([fig.name for fig in report.figures])
    for fig in report.figures:
        name = stems[fig.name]
        entry = {"png": f"figures/{name}.png"}
        pngs[fig.name] = figure_png(fig)
        (figures_dir / f"{name}.png").write_bytes(pngs[fig.name])
        if svg:
            # The PNG's layout, kept: constrained layout costs a third of a draw, and the SVG
            # then places everything exactly as the PNG does.
            fig.figure.set_layout_engine("none")
            fig.figure.savefig(figures_dir / f"{name}.svg", format="svg")
            entry["svg"] = f"figures/{name}.svg"
        (figures_dir / f"{name}.json").write_text(json.dumps(json_safe(fig.data), indent=1))
        entry["json"] = f"figures/{name}.json"
        if fig.rows:
            with (figures_dir / f"{name}.csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(fig.rows[0]), lineterminator="\n")
                writer.writeheader()
                for row in fig.rows:
                    writer.writerow(
                        {k: repr(v) if isinstance(v, float) else v for k, v in row.items()}
                    )
            entry["csv"] = f"figures/{name}.csv"
        files[fig.name] = entry
    (out_dir / "table.csv").write_text(table_csv(report.rows))
    (out_dir / "report.json").write_text(
        json.dumps(json_safe(report.to_json_dict(files)), indent=1)
    )
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(report, files, pngs))
    return html_path
