"""One self-contained HTML page: tables, findings and figures embedded as base64 PNG."""

from __future__ import annotations

import base64
import html
import io

from gradlab.science.report.build import Report
from gradlab.science.report.figures import PlotFigure
from gradlab.science.report.tables import TEXT_HEADER, row_cells_text

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;
color:#222;line-height:1.45;padding:0 1rem}
table{border-collapse:collapse;margin:1rem 0;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.finding{margin:.4rem 0}.kind{font-family:monospace;background:#eef;padding:0 .3rem}
.status-succeeded{background:#dfd}.status-running{background:#ffd}.status-missing,
.status-queued{background:#eee}.status-failed,.status-diverged,.status-cancelled{background:#fdd}
figure{margin:1.5rem 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}.partial{background:#ffd;padding:.5rem}
"""


def figure_png(fig: PlotFigure) -> bytes:
    buffer = io.BytesIO()
    fig.figure.savefig(buffer, format="png")
    return buffer.getvalue()


def render_html(report: Report, links: dict[str, dict[str, str]] | None = None,
                pngs: dict[str, bytes] | None = None) -> str:
    """The whole report as one HTML string (figures inlined; ``links`` adds export links).
    ``pngs``: figures already rendered, by name (drawing one costs more than the whole page)."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(report.study)}: gradlab report</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(report.study)}</h1>",
        f"<p>{e(report.description)}</p>" if report.description else "",
        f"<p>Scale <b>{e(report.scale)}</b>; generated {e(report.generated_at)}; "
        f"{report.runs_finished} of {len(report.completion)} runs finished.</p>",
    ]
    if not report.complete:
        parts.append(
            "<p class='partial'>Partial results: some runs are still running or not started; "
            "every number below is over the seeds and epochs finished so far (n says how "
            "many).</p>"
        )
    parts.append("<h2>Results</h2>")
    parts.append(
        "<p>Final values are each seed's last finished epoch; test uses the best-validation "
        "weights. Mean +- sample std across seeds (n seeds).</p>"
    )
    parts.append(_table(TEXT_HEADER, [row_cells_text(r) for r in report.rows]))
    parts.append("<h2>Findings</h2>")
    if report.findings:
        parts.append("<ul>")
        for f in report.findings:
            parts.append(
                f"<li class='finding'><span class='kind'>{e(f.kind)}</span> {e(f.sentence)}</li>"
            )
        parts.append("</ul>")
    else:
        parts.append("<p>No diagnostic fired on the results so far.</p>")
    parts.append(_completion(report))
    parts.append("<h2>Figures</h2>")
    for fig in report.figures:
        png = pngs[fig.name] if pngs and fig.name in pngs else figure_png(fig)
        encoded = base64.b64encode(png).decode("ascii")
        extra = ""
        if links and fig.name in links:
            extra = " ".join(
                f"<a href='{e(path)}'>{e(kind)}</a>" for kind, path in links[fig.name].items()
            )
        parts.append(
            f"<figure id='{e(fig.name)}'><h3>{e(fig.title)}</h3>"
            f"<img alt='{e(fig.title)}' src='data:image/png;base64,{encoded}'>"
            f"<figcaption>{e(fig.caption)} {extra}</figcaption></figure>"
        )
    settings = report.settings.model_dump()
    parts.append("<h2>Diagnostic settings</h2>")
    parts.append(_table(["setting", "value"], [[k, str(v)] for k, v in settings.items()]))
    parts.append(_reproducibility(report))
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(header: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _completion(report: Report) -> str:
    e = html.escape
    seeds = sorted({c.seed for c in report.completion})
    cells = list(dict.fromkeys(c.cell for c in report.completion))
    by_key = {(c.cell, c.seed): c for c in report.completion}
    head = "".join(f"<th>seed {s}</th>" for s in seeds)
    rows = []
    for cell in cells:
        tds = []
        for seed in seeds:
            entry = by_key.get((cell, seed))
            if entry is None:
                tds.append("<td></td>")
            else:
                tds.append(
                    f"<td class='status-{e(entry.status)}'>{e(entry.status)} "
                    f"{entry.epochs_done}/{entry.epochs_planned}</td>"
                )
        rows.append(f"<tr><td>{e(cell)}</td>{''.join(tds)}</tr>")
    return (
        "<h2>Completion (cell x seed)</h2><table><thead><tr><th>cell</th>"
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _reproducibility(report: Report) -> str:
    """Each run's pack: trained alone, or fused with others (same numbers up to rounding)."""
    rows = [[r["cell"], str(r["seed"]),
             "alone" if r["pack"] is None else f"pack {r['pack']} ({r['pack_size']} runs)",
             r["precision"] or "-"]
            for r in report.reproducibility()]
    return (
        "<h2>Reproducibility</h2><p>Runs of the same shape may train as one fused model "
        "(GRADLAB_PACK_SIZE): each keeps its own seed, data order, schedule, metrics and "
        "checkpoints, and matches the run trained alone up to float reassociation. Precision: "
        "what each run computed in (fp32, or bf16 autocast with fp32 weights and "
        "gradients).</p>"
        + _table(["cell", "seed", "trained", "precision"], rows)
    )
