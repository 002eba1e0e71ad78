"""Write a report to a folder: report.html, report.json, table.csv and figures/*."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from gradlab.science.report.build import Report
from gradlab.science.report.html import figure_png, render_html
from gradlab.science.report.tables import table_csv


def json_safe(value: Any) -> Any:
    # JSON has no NaN/inf; null marks a value that could not be computed or plotted.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_report(report: Report, out_dir: Path, *, svg: bool = True) -> Path:
    """Write everything; returns the path of ``report.html``. Closes nothing the caller needs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(exist_ok=True)
    files: dict[str, dict[str, str]] = {}
    for fig in report.figures:
        stem = figures_dir / fig.name
        entry = {"png": f"figures/{fig.name}.png"}
        stem.with_suffix(".png").write_bytes(figure_png(fig))
        if svg:
            fig.figure.savefig(stem.with_suffix(".svg"), format="svg")
            entry["svg"] = f"figures/{fig.name}.svg"
        stem.with_suffix(".json").write_text(json.dumps(json_safe(fig.data), indent=1))
        entry["json"] = f"figures/{fig.name}.json"
        if fig.rows:
            with stem.with_suffix(".csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(fig.rows[0]), lineterminator="\n")
                writer.writeheader()
                for row in fig.rows:
                    writer.writerow(
                        {k: repr(v) if isinstance(v, float) else v for k, v in row.items()}
                    )
            entry["csv"] = f"figures/{fig.name}.csv"
        files[fig.name] = entry
    (out_dir / "table.csv").write_text(table_csv(report.rows))
    (out_dir / "report.json").write_text(
        json.dumps(json_safe(report.to_json_dict(files)), indent=1)
    )
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(report, files))
    return html_path
