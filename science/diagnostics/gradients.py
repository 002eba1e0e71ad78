"""Vanishing and exploding gradients: one detector, read in either direction.

A layer is past the threshold when its mean |g| (across seeds) is past it in each of the last
``persist_epochs`` epochs; the network is, when some layer is or the first-to-last layer ratio
of mean |g| is past its own limit in each of them. Vanishing reads "below" (Adam's eps by
default: below it Adam's step is ``lr * g / eps``, so the weights barely move), exploding
"above"; each then reports what matters in its direction: where the flow dies, or where it
peaks.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

from gradlab.science.aggregate import GradFlowStats, gradflow_stats
from gradlab.science.diagnostics.evidence import (
    ExplodingEvidence,
    GradientEvidence,
    VanishingEvidence,
    Window,
)
from gradlab.science.diagnostics.settings import DiagnosticSettings
from gradlab.science.study_results import CellResult


def first_to_last(first: float, last: float) -> float:
    """First-to-last layer ratio of mean |g|; NaN when it cannot be formed."""
    if last == 0 or not math.isfinite(last) or not math.isfinite(first):
        return math.nan
    return first / last


@dataclass(frozen=True)
class GradientScan:
    """One cell's flow over the checked epochs: which layers and ratios are past the limits."""

    flow: GradFlowStats
    recent: list[int]  # indices into flow.epochs: the last persist_epochs of them
    past: list[int]  # layer indices past the threshold in every recent epoch
    ratios: list[float]  # first-to-last ratio at each recent epoch
    threshold: float
    ratio_threshold: float
    window: Window

    @property
    def last(self) -> list[float]:
        """Mean |g| per layer at the latest epoch."""
        return self.flow.mean[self.recent[-1]]


def _common(scan: GradientScan) -> dict[str, object]:
    """The fields either direction reports (:class:`GradientEvidence`'s), from the scan."""
    flow = scan.flow
    return GradientEvidence(
        epoch=flow.epochs[scan.recent[-1]],
        epochs_checked=[flow.epochs[i] for i in scan.recent],
        threshold=scan.threshold,
        ratio_threshold=scan.ratio_threshold,
        layers_total=len(flow.layers),
        first_to_last_ratio=scan.ratios[-1],
        seeds=flow.n[scan.recent[-1]],
        window=scan.window,
    ).model_dump()


def _vanishing_evidence(scan: GradientScan) -> VanishingEvidence:
    names = [scan.flow.layers[j] for j in scan.past]
    return VanishingEvidence(
        **_common(scan),
        layers_below=names,
        layers_below_count=len(names),
        first_layer=scan.flow.layers[0],
        first_layer_mean_abs=scan.last[0],
        last_layer=scan.flow.layers[-1],
        last_layer_mean_abs=scan.last[-1],
    )


def _exploding_evidence(scan: GradientScan) -> ExplodingEvidence:
    last = scan.last
    peak = max(range(len(last)), key=lambda j: last[j] if math.isfinite(last[j]) else -math.inf)
    return ExplodingEvidence(
        **_common(scan),
        layers_above=[scan.flow.layers[j] for j in scan.past],
        largest_layer=scan.flow.layers[peak],
        largest_mean_abs=last[peak],
    )


@dataclass(frozen=True)
class GradientDetector:
    """Gradients past a limit in one direction (``past(value, limit)``: below or above)."""

    past: Callable[[float, float], bool]
    limits: Callable[[DiagnosticSettings], tuple[float, float]]  # (threshold, ratio)
    evidence: Callable[[GradientScan], VanishingEvidence | ExplodingEvidence]

    def __call__(
        self, cell: CellResult, settings: DiagnosticSettings
    ) -> VanishingEvidence | ExplodingEvidence | None:
        scan = self.scan(cell, settings)
        return None if scan is None else self.evidence(scan)

    def scan(self, cell: CellResult, settings: DiagnosticSettings) -> GradientScan | None:
        """The cell's scan when a layer or the ratio is past its limit throughout, else None."""
        flow = gradflow_stats(cell.runs, "mean_abs", settings.window)
        if not flow.epochs or not flow.layers:
            return None
        k = min(settings.persist_epochs, len(flow.epochs))
        recent = list(range(len(flow.epochs) - k, len(flow.epochs)))
        threshold, ratio_threshold = self.limits(settings)
        past = [
            j
            for j in range(len(flow.layers))
            if all(self.past(flow.mean[i][j], threshold) for i in recent)
        ]
        ratios = [first_to_last(flow.mean[i][0], flow.mean[i][-1]) for i in recent]
        if not past and not all(self.past(r, ratio_threshold) for r in ratios):
            return None
        return GradientScan(flow, recent, past, ratios, threshold, ratio_threshold,
                            settings.window)


VANISHING = GradientDetector(
    past=operator.lt,
    limits=lambda s: (s.vanishing_threshold, s.vanishing_ratio),
    evidence=_vanishing_evidence,
)
EXPLODING = GradientDetector(
    past=operator.gt,
    limits=lambda s: (s.exploding_threshold, s.exploding_ratio),
    evidence=_exploding_evidence,
)
