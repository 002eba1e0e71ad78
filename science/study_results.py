"""What a study has produced so far: a CellResult per cell and a SeedRun per seed.

Plain typed records built from :mod:`gradlab.science.records`, by the store (reading rows back) or
by the CLI (from ``fit`` results); aggregation, diagnostics and reports read only these.
A run still in progress simply has fewer epochs; a seed not started yet has no ``SeedRun``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gradlab.science.records import (
    GRADFLOW_STATS,
    GRADFLOW_WINDOWS,
    STATUS_AFTER,
    TERMINAL_RUN_STATUSES,
    RunHistory,
    RunStatus,
    TrainingResult,
)
from gradlab.science.spec import ExperimentSpec


@dataclass(frozen=True, kw_only=True)
class SeedRun(RunHistory):
    """One seed of one cell: its status and history so far (a run in progress has fewer
    epochs)."""

    seed: int
    status: RunStatus
    # the fused pack its last attempt trained in (gradlab.science.fusion); None: alone
    pack: str | None = None
    # what it computed in, resolved from the spec's choice (fp32, bf16); None: not started
    precision: str | None = None

    @property
    def epochs_done(self) -> int:
        return len(self.epochs)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES

    @classmethod
    def from_training_result(cls, seed: int, result: TrainingResult) -> SeedRun:
        return cls(
            seed=seed,
            status=STATUS_AFTER[result.status],
            layers=tuple(result.layers),
            epochs=list(result.epochs),
            gradflow=list(result.gradflow),
            test=result.test,
            precision=result.environment.get("precision"),
        )


@dataclass(frozen=True)
class CellResult:
    """One study cell (an experiment) and the runs of its seeds that exist so far."""

    name: str
    coordinates: dict[str, Any]
    spec: ExperimentSpec
    runs: list[SeedRun] = field(default_factory=list)
    parameters: int | None = None

    @property
    def seeds_planned(self) -> list[int]:
        return list(self.spec.seeds)

    def run_for(self, seed: int) -> SeedRun | None:
        return next((r for r in self.runs if r.seed == seed), None)

    @property
    def layers(self) -> tuple[str, ...]:
        """Layer names in depth order (every seed of a cell has the same model)."""
        return next((r.layers for r in self.runs if r.layers), ())

    @property
    def complete(self) -> bool:
        return all(
            (run := self.run_for(s)) is not None and run.finished for s in self.seeds_planned
        )


def check_window_and_stat(window: str, stat: str) -> None:
    if window not in GRADFLOW_WINDOWS:
        raise ValueError(f"window must be one of {GRADFLOW_WINDOWS}, got {window!r}")
    if stat not in GRADFLOW_STATS:
        raise ValueError(f"stat must be one of {GRADFLOW_STATS}, got {stat!r}")
