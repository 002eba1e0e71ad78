"""Fixes: a sibling that differs only by one setting turned on and no longer has a problem the
other has.

The levers and what each is credited with are a table (:data:`LEVERS`): BatchNorm and residual
connections with vanishing gradients, not training and degradation ("BatchNorm restored gradient
flow to layer X", "residual connections removed the degradation: +Y train accuracy"); weight
decay with overfitting only, the seed study's cure for it (crediting a lever with anything else
would read causes into coincidences). One function credits a fix (:func:`credit`); what it
measures depends on the problem (:data:`MEASURES`): a fix of training accuracy must gain at
least ``fix_min_gain`` (and a fixed degradation must no longer trail the shallower sibling by
more than ``degradation_margin``), a cure of overfitting must shrink the gap between validation
and training loss by at least ``fix_min_gap_reduction`` (relative) at the latest epoch both
have.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from gradlab.science.aggregate import SeriesStats, gradflow_stats, metric_series
from gradlab.science.diagnostics.evidence import (
    AnyFixEvidence,
    DegradationEvidence,
    DegradationFixEvidence,
    FindingKind,
    GradientFixEvidence,
    LeverFlag,
    OverfittingEvidence,
    OverfittingFixEvidence,
    ProblemKind,
    TrainingFixEvidence,
    VanishingEvidence,
)
from gradlab.science.diagnostics.findings import ExperimentRef, Finding
from gradlab.science.diagnostics.gradients import first_to_last
from gradlab.science.diagnostics.sentences import state
from gradlab.science.diagnostics.settings import DiagnosticSettings
from gradlab.science.diagnostics.siblings import (
    Siblings,
    at,
    latest_common,
    sibling_pairs,
    spec_value,
)
from gradlab.science.study_results import CellResult


@dataclass(frozen=True)
class Lever:
    """A setting that, turned on (a truthy value where its sibling has a falsy one), may cure
    the problems in ``cures``; ``flag`` names it in the evidence."""

    flag: LeverFlag
    path: str
    cures: frozenset[ProblemKind]

    def pairs(self, cells: Sequence[CellResult]) -> Iterator[Siblings]:
        return sibling_pairs(
            cells,
            (self.path,),
            lambda off, on: not spec_value(off, self.path) and bool(spec_value(on, self.path)),
        )


_STRUCTURE_CURES: frozenset[ProblemKind] = frozenset(
    {"vanishing_gradients", "not_training", "degradation"}
)
LEVERS = (
    Lever("batch_norm", "batch_norm", _STRUCTURE_CURES),
    Lever("residual", "residual", _STRUCTURE_CURES),
    Lever("weight_decay", "hyperparameters.weight_decay", frozenset({"overfitting"})),
)


@dataclass(frozen=True)
class FixCase:
    """A problem of ``pair.base`` that ``pair.other`` (``lever`` turned on) does not have."""

    problem: Finding
    pair: Siblings
    lever: Lever
    cells: Sequence[CellResult]
    settings: DiagnosticSettings


def fixes(
    cells: Sequence[CellResult], problems: Sequence[Finding], settings: DiagnosticSettings
) -> list[Finding]:
    """Every problem that a lever's sibling no longer has and that the lever is credited
    with; per lever, in the order of cells, then of the problems."""
    by_cell: dict[str, list[Finding]] = {}
    for f in problems:
        # A degradation is the deeper sibling's problem; the others are their cell's.
        owners = [f.evidence.deep] if isinstance(f.evidence, DegradationEvidence) else [
            ref.name for ref in f.experiments
        ]
        for name in owners:
            by_cell.setdefault(name, []).append(f)
    found: list[Finding] = []
    for lever in LEVERS:
        for pair in lever.pairs(cells):
            remaining = {f.kind for f in by_cell.get(pair.other.name, [])}
            for problem in by_cell.get(pair.base.name, []):
                if problem.kind in lever.cures and problem.kind not in remaining:
                    fix = credit(FixCase(problem, pair, lever, cells, settings))
                    if fix is not None:
                        found.append(fix)
    return found


def credit(case: FixCase) -> Finding | None:
    """The fix finding of ``case`` when its measure credits it, else None; it names the
    problem's experiments, then the sibling that no longer has the problem."""
    measure = MEASURES.get(case.problem.kind)
    evidence = None if measure is None else measure(case)
    if evidence is None:
        return None
    return state(evidence, [*case.problem.experiments, ExperimentRef.of(case.pair.other.spec)])


# --- what a fix must show, per problem ------------------------------------------------------


def _restored_flow(case: FixCase) -> GradientFixEvidence | None:
    """Vanishing gradients: which of the layers below the threshold are above it now."""
    problem = case.problem.evidence
    assert isinstance(problem, VanishingEvidence)
    threshold = case.settings.vanishing_threshold
    after = gradflow_stats(case.pair.other.runs, "mean_abs", case.settings.window)
    if not after.epochs:
        return None
    latest = after.mean[-1]
    values = dict(zip(after.layers, latest, strict=True))
    restored = [name for name in problem.layers_below if values.get(name, 0.0) >= threshold]
    return GradientFixEvidence(
        flag=case.lever.flag,
        epoch=after.epochs[-1],
        threshold=threshold,
        layer=restored[0] if restored else problem.first_layer,
        layers_restored=restored,
        layers_restored_count=len(restored),
        layers_below_before=problem.layers_below_count,
        first_layer=problem.first_layer,
        first_layer_mean_abs_before=problem.first_layer_mean_abs,
        first_layer_mean_abs_after=values.get(problem.first_layer, latest[0]),
        first_to_last_ratio_before=problem.first_to_last_ratio,
        first_to_last_ratio_after=first_to_last(latest[0], latest[-1]),
    )


@dataclass(frozen=True)
class _AccuracyGain:
    epoch: int
    before: float
    after: float
    gain: float


def _accuracy_gain(case: FixCase, *also: SeriesStats) -> _AccuracyGain | None:
    """Training accuracy of the sibling against the cell's at the latest epoch both (and every
    series in ``also``) have, when it gains at least ``fix_min_gain``."""
    before = metric_series(case.pair.base.runs, "train_acc")
    after = metric_series(case.pair.other.runs, "train_acc")
    epoch = latest_common(before, after, *also)
    if epoch is None:
        return None
    gain = at(after, epoch) - at(before, epoch)
    if gain < case.settings.fix_min_gain:
        return None
    return _AccuracyGain(epoch, at(before, epoch), at(after, epoch), gain)


def _made_it_train(case: FixCase) -> TrainingFixEvidence | None:
    """Not training: the sibling's training accuracy is higher by ``fix_min_gain``."""
    gained = _accuracy_gain(case)
    if gained is None:
        return None
    return TrainingFixEvidence(
        flag=case.lever.flag,
        epoch=gained.epoch,
        train_acc_before=gained.before,
        train_acc_after=gained.after,
        train_acc_gain=gained.gain,
    )


def _removed_degradation(case: FixCase) -> DegradationFixEvidence | None:
    """Degradation: the sibling gains ``fix_min_gain`` and no longer trails the shallower
    cell (the fixed net must not be degraded against it either)."""
    problem = case.problem.evidence
    assert isinstance(problem, DegradationEvidence)
    shallow = next((c for c in case.cells if c.name == problem.shallow), None)
    if shallow is None:
        return None
    s_acc = metric_series(shallow.runs, "train_acc")
    gained = _accuracy_gain(case, s_acc)
    if gained is None:
        return None
    if at(s_acc, gained.epoch) - gained.after > case.settings.degradation_margin:
        return None  # still worse than the shallow net: not removed
    return DegradationFixEvidence(
        flag=case.lever.flag,
        epoch=gained.epoch,
        shallow=shallow.name,
        train_acc_shallow=at(s_acc, gained.epoch),
        train_acc_before=gained.before,
        train_acc_after=gained.after,
        train_acc_gain=gained.gain,
    )


def _loss_gap(cell: CellResult, epoch: int) -> tuple[float, float, float]:
    """(validation loss, training loss, their difference) of ``cell`` at ``epoch``."""
    val = at(metric_series(cell.runs, "val_loss"), epoch)
    train = at(metric_series(cell.runs, "train_loss"), epoch)
    return val, train, val - train


def _val_loss_rise(val: SeriesStats) -> float:
    """Relative rise of the latest validation loss above its minimum (0 when it is the minimum)."""
    lowest = min(val.mean)
    return (val.mean[-1] - lowest) / abs(lowest) if lowest else math.inf


def _cured_overfitting(case: FixCase) -> OverfittingFixEvidence | None:
    """Overfitting: the gap of validation over training loss shrank by at least
    ``fix_min_gap_reduction`` (the sibling no longer overfits: checked before)."""
    problem = case.problem.evidence
    assert isinstance(problem, OverfittingEvidence)
    without, with_ = case.pair.base, case.pair.other
    after_val = metric_series(with_.runs, "val_loss")
    epoch = latest_common(metric_series(without.runs, "val_loss"), after_val,
                          metric_series(with_.runs, "train_loss"))
    if epoch is None:
        return None
    val_before, train_before, gap_before = _loss_gap(without, epoch)
    val_after, train_after, gap_after = _loss_gap(with_, epoch)
    if gap_before <= 0:
        return None  # nothing to shrink: validation is not behind training
    reduction = (gap_before - gap_after) / gap_before
    if reduction < case.settings.fix_min_gap_reduction:
        return None
    return OverfittingFixEvidence(
        flag=case.lever.flag,
        weight_decay=with_.spec.hyperparameters.weight_decay,
        epoch=epoch,
        val_loss_before=val_before,
        train_loss_before=train_before,
        gap_before=gap_before,
        val_loss_after=val_after,
        train_loss_after=train_after,
        gap_after=gap_after,
        gap_reduction=reduction,
        val_loss_rise_before=problem.val_loss_rise,
        val_loss_rise_after=_val_loss_rise(after_val),
    )


FixMeasure = Callable[[FixCase], AnyFixEvidence | None]
MEASURES: dict[FindingKind, FixMeasure] = {
    "vanishing_gradients": _restored_flow,
    "not_training": _made_it_train,
    "degradation": _removed_degradation,
    "overfitting": _cured_overfitting,
}
