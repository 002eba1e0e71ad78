"""Sibling cells (the same configuration but one field) and the degradation between depth
siblings.

Degradation: a deeper sibling (same settings but depth) with *training* accuracy lower by more
than ``degradation_margin`` at the latest epoch both have (training, not validation, accuracy:
this is what tells degradation apart from overfitting).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from gradlab.science.aggregate import SeriesStats, metric_series
from gradlab.science.diagnostics.evidence import DegradationEvidence
from gradlab.science.diagnostics.settings import DiagnosticSettings
from gradlab.science.spec import ExperimentSpec
from gradlab.science.study_results import CellResult


@dataclass(frozen=True)
class Siblings:
    """Two cells that differ only by some fields: ``base`` (shallower, or with the setting
    off) and ``other`` (deeper, or with it on)."""

    base: CellResult
    other: CellResult


def spec_value(spec: ExperimentSpec, path: str) -> Any:
    """The value at a dotted path of the spec (``hyperparameters.weight_decay``)."""
    value: Any = spec
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _key_without(spec: ExperimentSpec, paths: Sequence[str]) -> str:
    data = spec.model_dump(mode="json", exclude={"name", "seeds"})
    for path in paths:
        *parents, leaf = path.split(".")
        node = data
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
    return repr(sorted(data.items()))


def sibling_pairs(
    cells: Sequence[CellResult],
    differing: Sequence[str],
    ordered: Callable[[ExperimentSpec, ExperimentSpec], bool],
) -> Iterator[Siblings]:
    """Every (base, other) pair equal but for the ``differing`` fields, with ``ordered(base,
    other)`` true; in the order of ``cells``, base first."""
    keys = {id(cell): _key_without(cell.spec, differing) for cell in cells}
    for base in cells:
        for other in cells:
            if other is base or not ordered(base.spec, other.spec):
                continue
            if keys[id(base)] == keys[id(other)]:
                yield Siblings(base, other)


def depth_siblings(cells: Sequence[CellResult]) -> Iterator[Siblings]:
    """Shallower (base) and deeper (other) cells with the same settings but depth."""
    return sibling_pairs(
        cells, ("depth", "blocks_per_stage"), lambda a, b: (b.depth or 0) > (a.depth or 0)
    )


def latest_common(*series: SeriesStats) -> int | None:
    """The latest epoch every series has, or None."""
    common = set.intersection(*(set(s.epochs) for s in series))
    return max(common) if common else None


def at(series: SeriesStats, epoch: int) -> float:
    return series.mean[series.epochs.index(epoch)]


def degradation(pair: Siblings, settings: DiagnosticSettings) -> DegradationEvidence | None:
    """The deeper sibling trains worse than the shallower one, or None."""
    s_acc = metric_series(pair.base.runs, "train_acc")
    d_acc = metric_series(pair.other.runs, "train_acc")
    epoch = latest_common(s_acc, d_acc)
    if epoch is None:
        return None
    gap = at(s_acc, epoch) - at(d_acc, epoch)
    if gap <= settings.degradation_margin:
        return None
    common = sorted(set(s_acc.epochs) & set(d_acc.epochs))
    return DegradationEvidence(
        epoch=epoch,
        shallow=pair.base.name,
        deep=pair.other.name,
        shallow_train_acc=at(s_acc, epoch),
        deep_train_acc=at(d_acc, epoch),
        gap=gap,
        epochs_lower=sum(1 for e in common if at(d_acc, e) < at(s_acc, e)),
        epochs_compared=len(common),
    )
