"""The table of detectors and :func:`diagnose`, which runs them over a study.

Every detector has one shape: it measures its subjects (one cell, or two sibling cells) and
returns typed evidence or nothing; :func:`gradlab.science.diagnostics.sentences.state` turns
evidence into a finding. Per cell, then depth siblings, then fixes (which read the problems
found before them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gradlab.science.diagnostics import curves
from gradlab.science.diagnostics.evidence import ProblemEvidence
from gradlab.science.diagnostics.findings import ExperimentRef, Finding
from gradlab.science.diagnostics.fixes import fixes
from gradlab.science.diagnostics.gradients import EXPLODING, VANISHING
from gradlab.science.diagnostics.sentences import state
from gradlab.science.diagnostics.settings import DiagnosticSettings
from gradlab.science.diagnostics.siblings import Siblings, degradation, depth_siblings
from gradlab.science.study_results import CellResult


@dataclass(frozen=True)
class CellDetector:
    """A problem read off one cell's across-seed means."""

    measure: Callable[[CellResult, DiagnosticSettings], ProblemEvidence | None]

    def __call__(self, cell: CellResult, settings: DiagnosticSettings) -> Finding | None:
        evidence = self.measure(cell, settings)
        return None if evidence is None else state(evidence, [ExperimentRef.of(cell.spec)])


@dataclass(frozen=True)
class PairDetector:
    """A problem read off two sibling cells (``pairs`` picks them from a study)."""

    pairs: Callable[[Sequence[CellResult]], Iterable[Siblings]]
    measure: Callable[[Siblings, DiagnosticSettings], ProblemEvidence | None]

    def __call__(
        self, cells: Sequence[CellResult], settings: DiagnosticSettings
    ) -> list[Finding]:
        found = []
        for pair in self.pairs(cells):
            evidence = self.measure(pair, settings)
            if evidence is not None:
                refs = [ExperimentRef.of(pair.base.spec), ExperimentRef.of(pair.other.spec)]
                found.append(state(evidence, refs))
        return found


vanishing_gradients = CellDetector(VANISHING)
exploding_gradients = CellDetector(EXPLODING)
not_training = CellDetector(curves.not_training)
overfitting = CellDetector(curves.overfitting)
degradations = PairDetector(depth_siblings, degradation)

CELL_DETECTORS = (vanishing_gradients, exploding_gradients, not_training, overfitting)
PAIR_DETECTORS = (degradations,)


def diagnose(
    cells: Sequence[CellResult], settings: DiagnosticSettings | None = None
) -> list[Finding]:
    """Every finding of a study (per cell, then sibling comparisons, then fixes)."""
    settings = settings or DiagnosticSettings()
    problems: list[Finding] = []
    for cell in cells:
        for detect in CELL_DETECTORS:
            finding = detect(cell, settings)
            if finding is not None:
                problems.append(finding)
    for compare in PAIR_DETECTORS:
        problems += compare(cells, settings)
    return problems + fixes(cells, problems, settings)
