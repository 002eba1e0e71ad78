"""A study's report: tables, figures, findings; one self-contained HTML file plus exports.

``build_report`` reads :class:`~gradlab.core.study_results.CellResult` s (complete or not);
``write_report`` writes ``report.html``, ``report.json``, ``table.csv`` and
``figures/<name>.{png,svg,json,csv}`` whose numbers are exactly those plotted.
"""

from gradlab.core.report.build import Report, build_report
from gradlab.core.report.html import render_html
from gradlab.core.report.writer import write_report

__all__ = ["Report", "build_report", "render_html", "write_report"]
