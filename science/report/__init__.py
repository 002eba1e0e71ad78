"""A study's report: tables, figures, findings; one self-contained HTML file plus exports.

``build_report`` reads :class:`~gradlab.science.study_results.CellResult` s (complete or not);
``write_report`` writes ``report.html``, ``report.json``, ``table.csv`` and
``figures/<name>.{png,svg,json,csv}`` whose numbers are exactly those plotted.
"""

from gradlab.science.report.build import Report, build_report
from gradlab.science.report.html import render_html
from gradlab.science.report.writer import write_report

__all__ = ["Report", "build_report", "render_html", "write_report"]
