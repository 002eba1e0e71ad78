"""Assemble a report from a study's results: table, completion matrix, findings, figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gradlab.science.diagnostics import DiagnosticSettings, Finding, diagnose
from gradlab.science.report.figures import PlotFigure, study_figures
from gradlab.science.report.tables import TableRow, table_rows
from gradlab.science.study_results import CellResult


@dataclass(frozen=True)
class CompletionEntry:
    """One (cell, seed) of the completion matrix."""

    cell: str
    seed: int
    status: str  # "missing" when no run exists yet
    epochs_done: int
    epochs_planned: int
    # reproducibility: the fused pack the run trained in (None: alone, or not started)
    pack: str | None = None
    # what the run computed in (fp32, bf16; None: not started)
    precision: str | None = None


@dataclass
class Report:
    study: str
    description: str
    scale: str
    generated_at: str
    settings: DiagnosticSettings
    rows: list[TableRow]
    completion: list[CompletionEntry]
    findings: list[Finding]
    figures: list[PlotFigure] = field(default_factory=list)

    @property
    def runs_finished(self) -> int:
        return sum(
            1
            for c in self.completion
            if c.status in ("succeeded", "failed", "cancelled", "diverged")
        )

    def reproducibility(self) -> list[dict[str, Any]]:
        """How each run was trained: alone, or in which fused pack and with how many runs
        (a pack's runs match their runs alone up to float reassociation, not bit for bit),
        and in which precision."""
        sizes: dict[str, int] = {}
        for entry in self.completion:
            if entry.pack is not None:
                sizes[entry.pack] = sizes.get(entry.pack, 0) + 1
        return [{"cell": c.cell, "seed": c.seed, "pack": c.pack,
                 "pack_size": sizes.get(c.pack, 1) if c.pack is not None else None,
                 "precision": c.precision}
                for c in self.completion if c.status != "missing"]

    @property
    def complete(self) -> bool:
        return self.runs_finished == len(self.completion)

    def to_json_dict(self, figure_files: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
        return {
            "study": self.study,
            "description": self.description,
            "scale": self.scale,
            "generated_at": self.generated_at,
            "complete": self.complete,
            "runs_finished": self.runs_finished,
            "runs_planned": len(self.completion),
            "conventions": {
                "std": "sample std (ddof=1) across seeds; 0.0 with one seed (n says how many)",
                "final": "each seed's last finished epoch; test = best-validation weights",
                "gradient_window": self.settings.window,
            },
            "diagnostic_settings": self.settings.model_dump(),
            "table": [r.to_json_dict() for r in self.rows],
            "completion": [c.__dict__ for c in self.completion],
            "reproducibility": self.reproducibility(),
            "findings": [f.model_dump(mode="json") for f in self.findings],
            "figures": [
                {
                    "name": f.name,
                    "title": f.title,
                    "caption": f.caption,
                    **((figure_files or {}).get(f.name, {})),
                }
                for f in self.figures
            ],
        }


def completion_matrix(cells: Sequence[CellResult]) -> list[CompletionEntry]:
    entries = []
    for cell in cells:
        for seed in cell.seeds_planned:
            run = cell.run_for(seed)
            entries.append(
                CompletionEntry(
                    cell=cell.name,
                    seed=seed,
                    status="missing" if run is None else run.status,
                    epochs_done=0 if run is None else run.epochs_done,
                    epochs_planned=cell.spec.hyperparameters.epochs,
                    pack=None if run is None else run.pack,
                    precision=None if run is None else run.precision,
                )
            )
    return entries


def build_report(
    study: str,
    cells: Sequence[CellResult],
    *,
    scale: str = "full",
    description: str = "",
    settings: DiagnosticSettings | None = None,
    with_figures: bool = True,
) -> Report:
    """The report of ``cells`` as they are now (runs may still be going, seeds missing)."""
    settings = settings or DiagnosticSettings()
    cells = list(cells)
    return Report(
        study=study,
        description=description,
        scale=scale,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        settings=settings,
        rows=table_rows(cells),
        completion=completion_matrix(cells),
        findings=diagnose(cells, settings),
        figures=study_figures(cells, settings.window) if with_figures else [],
    )
