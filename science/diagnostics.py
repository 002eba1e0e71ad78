"""Diagnostics: what went wrong in a study and what fixed it, in words with numbers.

Every diagnostic reads the across-seed means (:mod:`gradlab.science.aggregate`) of one cell, or of
two *sibling* cells (the same configuration except one field), and every threshold is a named
setting in :class:`DiagnosticSettings`. Kinds:

- ``vanishing_gradients``: layers whose mean |g| stays below ``vanishing_threshold`` (Adam's
  eps by default: below it Adam's step is ``lr * g / eps``, so the weights barely move), or a
  first-to-last layer ratio below ``vanishing_ratio``, in each of the last ``persist_epochs``.
- ``exploding_gradients``: a layer's mean |g| above ``exploding_threshold`` or a first-to-last
  ratio above ``exploding_ratio``, in each of the last ``persist_epochs``.
- ``not_training``: at the latest epoch the training loss is not below ln(classes) by more
  than ``not_training_loss_margin``, it fell by at most ``not_training_min_drop`` since the first
  epoch (plus what learning the class frequencies alone gives on that many training images,
  :func:`prior_fit_gain`), and training accuracy is at most ``not_training_acc_factor`` x
  chance.
- ``degradation``: a deeper sibling (same settings but depth) with *training* accuracy lower
  by more than ``degradation_margin`` at the latest epoch both have (training, not validation,
  accuracy: this is what tells degradation apart from overfitting).
- ``overfitting``: validation loss risen by more than ``overfitting_min_rise`` (relative) above
  its minimum, at least ``overfitting_min_epochs`` epochs after it, while training loss fell.
- ``fix``: a sibling that differs only by turning on ``batch_norm`` or ``residual`` and no
  longer has a problem the other has ("BatchNorm restored gradient flow to layer X",
  "residual connections removed the degradation: +Y train accuracy"); a fix of training
  accuracy must gain at least ``fix_min_gain``. Weight decay is credited the same way: a
  sibling that differs only by a weight decay above zero and no longer overfits, with a gap
  between validation and training loss smaller by at least ``fix_min_gap_reduction``
  (relative) at the latest epoch both have ("weight decay 0.001 cured the overfitting").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gradlab.science.aggregate import GradFlowStats, SeriesStats, gradflow_stats, metric_series
from gradlab.science.spec import TRAIN_SPLIT_SIZE, ExperimentSpec
from gradlab.science.study_results import CellResult

FindingKind = Literal[
    "vanishing_gradients",
    "exploding_gradients",
    "not_training",
    "degradation",
    "overfitting",
    "fix",
]
EvidenceValue = float | int | str | bool | None | list[str] | list[float] | list[int]

FIX_FLAGS: dict[str, str] = {"batch_norm": "BatchNorm", "residual": "residual connections"}


class DiagnosticSettings(BaseModel):
    """The thresholds of every diagnostic (defaults documented per field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: Literal["last_batch", "epoch_mean"] = Field(
        "last_batch",
        description="gradient window read: last_batch is what the seed study plotted; "
        "epoch_mean (every step averaged) is less noisy",
    )
    persist_epochs: int = Field(
        3,
        ge=1,
        description="a gradient problem must hold in each of the last k epochs "
        "(all of them when fewer are done)",
    )
    vanishing_threshold: float = Field(1e-8, gt=0, description="mean |g| below: vanished")
    vanishing_ratio: float = Field(1e-4, gt=0, description="first/last layer mean |g| below")
    exploding_threshold: float = Field(10.0, gt=0, description="mean |g| above: exploded")
    exploding_ratio: float = Field(1e4, gt=0, description="first/last layer mean |g| above")
    not_training_loss_margin: float = Field(
        0.05, ge=0, description="nats from ln(classes) that still count as 'stuck'"
    )
    not_training_acc_factor: float = Field(
        2.0, ge=1, description="train accuracy at most this many times chance"
    )
    not_training_min_drop: float = Field(
        0.02,
        ge=0,
        description="a training loss that fell by more than this (nats, first to latest "
        "epoch) is learning, however slowly",
    )
    fix_min_gain: float = Field(
        0.01, ge=0, description="train-accuracy gain a fix must bring to be credited"
    )
    degradation_margin: float = Field(
        0.01, ge=0, description="train-accuracy gap that counts as 'lower'"
    )
    overfitting_min_rise: float = Field(
        0.02, ge=0, description="relative rise of val loss above its minimum"
    )
    overfitting_min_epochs: int = Field(2, ge=1, description="epochs after the val-loss minimum")
    fix_min_gap_reduction: float = Field(
        0.1,
        ge=0,
        description="relative shrink of the val-minus-train loss gap a weight-decay fix must "
        "bring to be credited with curing overfitting",
    )


class ExperimentRef(BaseModel):
    """Which experiment a finding is about."""

    name: str
    depth: int
    batch_norm: bool
    residual: bool

    @classmethod
    def of(cls, spec: ExperimentSpec) -> ExperimentRef:
        assert spec.depth is not None
        return cls(
            name=spec.name, depth=spec.depth, batch_norm=spec.batch_norm, residual=spec.residual
        )


class Finding(BaseModel):
    """One diagnosis: what, about which experiments, a sentence, and the numbers behind it."""

    kind: FindingKind
    experiments: list[ExperimentRef]
    sentence: str
    evidence: dict[str, EvidenceValue]


def diagnose(
    cells: Sequence[CellResult], settings: DiagnosticSettings | None = None
) -> list[Finding]:
    """Every finding of a study (per cell, then sibling comparisons, then fixes)."""
    settings = settings or DiagnosticSettings()
    findings: list[Finding] = []
    for cell in cells:
        findings += filter(
            None,
            (
                vanishing_gradients(cell, settings),
                exploding_gradients(cell, settings),
                not_training(cell, settings),
                overfitting(cell, settings),
            ),
        )
    findings += degradations(cells, settings)
    findings += fixes(cells, findings, settings)
    return findings


# --- gradient flow --------------------------------------------------------------------------


def _recent(flow: GradFlowStats, settings: DiagnosticSettings) -> list[int]:
    k = min(settings.persist_epochs, len(flow.epochs))
    return list(range(len(flow.epochs) - k, len(flow.epochs)))


def _ratio(first: float, last: float) -> float:
    if last == 0 or not math.isfinite(last) or not math.isfinite(first):
        return math.nan
    return first / last


def vanishing_gradients(cell: CellResult, settings: DiagnosticSettings) -> Finding | None:
    flow = gradflow_stats(cell.runs, "mean_abs", settings.window)
    if not flow.epochs or not flow.layers:
        return None
    recent = _recent(flow, settings)
    below = [
        j
        for j in range(len(flow.layers))
        if all(flow.mean[i][j] < settings.vanishing_threshold for i in recent)
    ]
    ratios = [_ratio(flow.mean[i][0], flow.mean[i][-1]) for i in recent]
    ratio_low = all(r < settings.vanishing_ratio for r in ratios)
    if not below and not ratio_low:
        return None
    last = flow.mean[recent[-1]]
    epoch = flow.epochs[recent[-1]]
    names = [flow.layers[j] for j in below]
    deepest = names[-1] if names else None
    if below:
        where = (
            f"{len(below)} of {len(flow.layers)} layers (from {names[0]} to {deepest}) kept "
            f"mean |g| below {settings.vanishing_threshold:g}"
        )
    else:
        where = (
            f"the first-to-last layer ratio of mean |g| stayed below {settings.vanishing_ratio:g}"
        )
    sentence = (
        f"Gradients vanish in {cell.name}: {where} in each of the last {len(recent)} epoch(s); "
        f"at epoch {epoch} {flow.layers[0]} has {last[0]:.2g} against {last[-1]:.2g} at "
        f"{flow.layers[-1]} (ratio {ratios[-1]:.2g})."
    )
    return Finding(
        kind="vanishing_gradients",
        experiments=[ExperimentRef.of(cell.spec)],
        sentence=sentence,
        evidence={
            "epoch": epoch,
            "epochs_checked": [flow.epochs[i] for i in recent],
            "threshold": settings.vanishing_threshold,
            "layers_below": names,
            "layers_below_count": len(below),
            "layers_total": len(flow.layers),
            "first_layer": flow.layers[0],
            "first_layer_mean_abs": last[0],
            "last_layer": flow.layers[-1],
            "last_layer_mean_abs": last[-1],
            "first_to_last_ratio": ratios[-1],
            "seeds": flow.n[recent[-1]],
            "window": settings.window,
        },
    )


def exploding_gradients(cell: CellResult, settings: DiagnosticSettings) -> Finding | None:
    flow = gradflow_stats(cell.runs, "mean_abs", settings.window)
    if not flow.epochs or not flow.layers:
        return None
    recent = _recent(flow, settings)
    above = [
        j
        for j in range(len(flow.layers))
        if all(flow.mean[i][j] > settings.exploding_threshold for i in recent)
    ]
    ratios = [_ratio(flow.mean[i][0], flow.mean[i][-1]) for i in recent]
    ratio_high = all(r > settings.exploding_ratio for r in ratios)
    if not above and not ratio_high:
        return None
    last = flow.mean[recent[-1]]
    epoch = flow.epochs[recent[-1]]
    names = [flow.layers[j] for j in above]
    peak = max(range(len(last)), key=lambda j: last[j] if math.isfinite(last[j]) else -math.inf)
    sentence = (
        f"Gradients explode in {cell.name}: "
        + (
            f"{len(above)} of {len(flow.layers)} layers kept mean |g| above "
            f"{settings.exploding_threshold:g}"
            if above
            else f"the first-to-last ratio stayed above {settings.exploding_ratio:g}"
        )
        + f" in each of the last {len(recent)} epoch(s); at epoch {epoch} the largest is "
        f"{last[peak]:.2g} at {flow.layers[peak]} (first-to-last ratio {ratios[-1]:.2g})."
    )
    return Finding(
        kind="exploding_gradients",
        experiments=[ExperimentRef.of(cell.spec)],
        sentence=sentence,
        evidence={
            "epoch": epoch,
            "epochs_checked": [flow.epochs[i] for i in recent],
            "threshold": settings.exploding_threshold,
            "layers_above": names,
            "largest_layer": flow.layers[peak],
            "largest_mean_abs": last[peak],
            "first_to_last_ratio": ratios[-1],
            "seeds": flow.n[recent[-1]],
            "window": settings.window,
        },
    )


# --- learning curves ------------------------------------------------------------------------


def not_training(cell: CellResult, settings: DiagnosticSettings) -> Finding | None:
    loss = metric_series(cell.runs, "train_loss")
    acc = metric_series(cell.runs, "train_acc")
    if not loss.epochs:
        return None
    classes = cell.spec.num_classes
    chance = 1.0 / classes
    ln_c = math.log(classes)
    last_loss, last_acc = loss.mean[-1], acc.mean[-1]
    # At or above ln(C) (a loss that rose is no better), not moving, accuracy at chance.
    stuck = last_loss >= ln_c - settings.not_training_loss_margin
    drop = loss.mean[0] - last_loss
    prior = prior_fit_gain(cell.spec)
    still = len(loss.epochs) < 2 or drop <= settings.not_training_min_drop + prior
    at_chance = last_acc <= settings.not_training_acc_factor * chance
    if not (stuck and still and at_chance):
        return None
    val_acc = metric_series(cell.runs, "val_acc")
    sentence = (
        f"{cell.name} does not train: after {loss.epochs[-1] + 1} epoch(s) its training loss is "
        f"{last_loss:.3f} (ln {classes} = {ln_c:.3f}) and its training accuracy {last_acc:.3f} "
        f"(chance {chance:.3f})."
    )
    return Finding(
        kind="not_training",
        experiments=[ExperimentRef.of(cell.spec)],
        sentence=sentence,
        evidence={
            "epoch": loss.epochs[-1],
            "train_loss": last_loss,
            "ln_classes": ln_c,
            "train_acc": last_acc,
            "val_acc": val_acc.mean[-1] if val_acc.mean else None,
            "chance": chance,
            "train_loss_drop": drop,
            "prior_fit_gain": prior,
            "seeds": loss.n[-1],
        },
    )


def prior_fit_gain(spec: ExperimentSpec) -> float:
    """How far below ln(classes) a net that learns nothing from the images can still bring its
    training loss: by learning the class frequencies of its N training images, the best
    constant prediction, whose loss is their entropy, on average (C - 1) / (2N) nats below
    ln(C) (the plug-in entropy's bias). 0.05 on 1,000 CIFAR-100 images, 0.001 on all 47,500:
    a property of the data, so the same rule reads every scale alike."""
    size = spec.data.train_limit or TRAIN_SPLIT_SIZE
    return (spec.num_classes - 1) / (2 * size)


def overfitting(cell: CellResult, settings: DiagnosticSettings) -> Finding | None:
    val = metric_series(cell.runs, "val_loss")
    train = metric_series(cell.runs, "train_loss")
    common = sorted(set(val.epochs) & set(train.epochs))
    if len(common) < settings.overfitting_min_epochs + 1:
        return None
    v = [val.mean[val.epochs.index(e)] for e in common]
    t = [train.mean[train.epochs.index(e)] for e in common]
    best = min(range(len(v)), key=lambda i: v[i])
    if len(v) - 1 - best < settings.overfitting_min_epochs:
        return None
    rise = (v[-1] - v[best]) / abs(v[best]) if v[best] else math.inf
    if rise <= settings.overfitting_min_rise or t[-1] >= t[best]:
        return None
    start = common[best + 1]
    sentence = (
        f"{cell.name} overfits from epoch {start}: validation loss rose from {v[best]:.3f} "
        f"(epoch {common[best]}) to {v[-1]:.3f} (epoch {common[-1]}, +{rise:.1%}) while "
        f"training loss fell from {t[best]:.3f} to {t[-1]:.3f}."
    )
    return Finding(
        kind="overfitting",
        experiments=[ExperimentRef.of(cell.spec)],
        sentence=sentence,
        evidence={
            "start_epoch": start,
            "best_val_epoch": common[best],
            "best_val_loss": v[best],
            "last_epoch": common[-1],
            "last_val_loss": v[-1],
            "val_loss_rise": rise,
            "train_loss_at_best": t[best],
            "last_train_loss": t[-1],
            "seeds": val.n[-1],
        },
    )


# --- siblings -------------------------------------------------------------------------------


def _key_without(spec: ExperimentSpec, *fields: str) -> str:
    data = spec.model_dump(mode="json", exclude={"name", "seeds", *fields})
    return repr(sorted(data.items()))


def _latest_common(a: SeriesStats, b: SeriesStats) -> int | None:
    common = set(a.epochs) & set(b.epochs)
    return max(common) if common else None


def _at(series: SeriesStats, epoch: int) -> float:
    return series.mean[series.epochs.index(epoch)]


def degradations(cells: Sequence[CellResult], settings: DiagnosticSettings) -> list[Finding]:
    """Deeper siblings (same settings but depth) that train worse than shallower ones."""
    found: list[Finding] = []
    for shallow in cells:
        for deep in cells:
            if deep is shallow or (deep.spec.depth or 0) <= (shallow.spec.depth or 0):
                continue
            if _key_without(deep.spec, "depth", "blocks_per_stage") != _key_without(
                shallow.spec, "depth", "blocks_per_stage"
            ):
                continue
            finding = _degradation(shallow, deep, settings)
            if finding is not None:
                found.append(finding)
    return found


def _degradation(
    shallow: CellResult, deep: CellResult, settings: DiagnosticSettings
) -> Finding | None:
    s_acc = metric_series(shallow.runs, "train_acc")
    d_acc = metric_series(deep.runs, "train_acc")
    epoch = _latest_common(s_acc, d_acc)
    if epoch is None:
        return None
    gap = _at(s_acc, epoch) - _at(d_acc, epoch)
    if gap <= settings.degradation_margin:
        return None
    common = sorted(set(s_acc.epochs) & set(d_acc.epochs))
    lower = sum(1 for e in common if _at(d_acc, e) < _at(s_acc, e))
    sentence = (
        f"Degradation: {deep.name} (depth {deep.spec.depth}) reaches a lower training accuracy "
        f"than its shallower sibling {shallow.name} (depth {shallow.spec.depth}) at epoch "
        f"{epoch}: {_at(d_acc, epoch):.3f} against {_at(s_acc, epoch):.3f} "
        f"(-{gap:.3f}; lower in {lower} of {len(common)} epochs)."
    )
    return Finding(
        kind="degradation",
        experiments=[ExperimentRef.of(shallow.spec), ExperimentRef.of(deep.spec)],
        sentence=sentence,
        evidence={
            "epoch": epoch,
            "shallow": shallow.name,
            "deep": deep.name,
            "shallow_train_acc": _at(s_acc, epoch),
            "deep_train_acc": _at(d_acc, epoch),
            "gap": gap,
            "epochs_lower": lower,
            "epochs_compared": len(common),
        },
    )


def fixes(
    cells: Sequence[CellResult], findings: Sequence[Finding], settings: DiagnosticSettings
) -> list[Finding]:
    """Problems of a cell that its sibling with batch_norm/residual turned on no longer has."""
    by_name: dict[str, list[Finding]] = {}
    for f in findings:
        if f.kind == "degradation":
            by_name.setdefault(str(f.evidence["deep"]), []).append(f)
        else:
            for ref in f.experiments:
                by_name.setdefault(ref.name, []).append(f)
    found: list[Finding] = []
    for flag, label in FIX_FLAGS.items():
        for without in cells:
            if getattr(without.spec, flag):
                continue
            for with_ in cells:
                if not getattr(with_.spec, flag):
                    continue
                if _key_without(with_.spec, flag) != _key_without(without.spec, flag):
                    continue
                problems = by_name.get(without.name, [])
                remaining = {f.kind for f in by_name.get(with_.name, [])}
                for problem in problems:
                    fix = _fix(problem, without, with_, label, flag, remaining, cells, settings)
                    if fix is not None:
                        found.append(fix)
    return found + _weight_decay_fixes(cells, by_name, settings)


def _key_without_weight_decay(spec: ExperimentSpec) -> str:
    data = spec.model_dump(mode="json", exclude={"name", "seeds"})
    data["hyperparameters"].pop("weight_decay")
    return repr(sorted(data.items()))


def _weight_decay_fixes(
    cells: Sequence[CellResult], by_name: dict[str, list[Finding]], settings: DiagnosticSettings
) -> list[Finding]:
    """Overfitting of a cell without weight decay that a sibling with it no longer has.

    Only overfitting: weight decay is the seed study's cure for it, and crediting it (or
    BatchNorm, residual connections) with anything else would read causes into coincidences.
    """
    found: list[Finding] = []
    for without in cells:
        if without.spec.hyperparameters.weight_decay != 0:
            continue
        problem = next((f for f in by_name.get(without.name, []) if f.kind == "overfitting"), None)
        if problem is None:
            continue
        for with_ in cells:
            if with_.spec.hyperparameters.weight_decay == 0:
                continue
            if _key_without_weight_decay(with_.spec) != _key_without_weight_decay(without.spec):
                continue
            if any(f.kind == "overfitting" for f in by_name.get(with_.name, [])):
                continue  # still overfits: reduced perhaps, not cured
            label = f"weight decay {with_.spec.hyperparameters.weight_decay:g}"
            candidate = _FixCandidate(problem, without, with_, label, "weight_decay", cells,
                                      settings)
            fix = _overfitting_fix(candidate)
            if fix is not None:
                found.append(fix)
    return found


@dataclass(frozen=True)
class _FixCandidate:
    """A problem of ``without`` and the sibling ``with_`` that differs only by ``flag``."""

    problem: Finding
    without: CellResult
    with_: CellResult
    label: str
    flag: str
    cells: Sequence[CellResult]
    settings: DiagnosticSettings

    @property
    def refs(self) -> list[ExperimentRef]:
        return [ExperimentRef.of(self.without.spec), ExperimentRef.of(self.with_.spec)]


def _fix(
    problem: Finding,
    without: CellResult,
    with_: CellResult,
    label: str,
    flag: str,
    remaining: set[str],
    cells: Sequence[CellResult],
    settings: DiagnosticSettings,
) -> Finding | None:
    """A fix finding when ``with_`` no longer has ``without``'s problem (kinds in
    ``remaining`` are the problems ``with_`` still has)."""
    fixer = _FIXERS.get(problem.kind)
    if fixer is None or problem.kind in remaining:
        return None
    return fixer(_FixCandidate(problem, without, with_, label, flag, cells, settings))


def _training_fix(c: _FixCandidate) -> Finding | None:
    before = metric_series(c.without.runs, "train_acc")
    after = metric_series(c.with_.runs, "train_acc")
    epoch = _latest_common(before, after)
    if epoch is None:
        return None
    gain = _at(after, epoch) - _at(before, epoch)
    if gain < c.settings.fix_min_gain:
        return None
    return Finding(
        kind="fix",
        experiments=c.refs,
        sentence=(
            f"{c.label} made the network train: {c.with_.name} reaches training accuracy "
            f"{_at(after, epoch):.3f} at epoch {epoch} where {c.without.name} is stuck at "
            f"{_at(before, epoch):.3f} (+{gain:.3f})."
        ),
        evidence={
            "fixes": "not_training",
            "flag": c.flag,
            "epoch": epoch,
            "train_acc_before": _at(before, epoch),
            "train_acc_after": _at(after, epoch),
            "train_acc_gain": gain,
        },
    )


def _degradation_fix(c: _FixCandidate) -> Finding | None:
    # The fixed net must not be degraded against its own shallower sibling either.
    shallow = next((x for x in c.cells if x.name == c.problem.evidence["shallow"]), None)
    if shallow is None:
        return None
    s_acc = metric_series(shallow.runs, "train_acc")
    before = metric_series(c.without.runs, "train_acc")
    after = metric_series(c.with_.runs, "train_acc")
    common = set(s_acc.epochs) & set(before.epochs) & set(after.epochs)
    if not common:
        return None
    epoch = max(common)
    if _at(s_acc, epoch) - _at(after, epoch) > c.settings.degradation_margin:
        return None  # still worse than the shallow net: not removed
    gain = _at(after, epoch) - _at(before, epoch)
    if gain < c.settings.fix_min_gain:
        return None
    versus_shallow = round(_at(after, epoch) - _at(s_acc, epoch), 3) + 0.0  # no "-0.000"
    return Finding(
        kind="fix",
        experiments=[ExperimentRef.of(shallow.spec), *c.refs],
        sentence=(
            f"{c.label} removed the degradation: {c.with_.name} reaches training accuracy "
            f"{_at(after, epoch):.3f} at epoch {epoch}, +{gain:.3f} over {c.without.name} "
            f"({_at(before, epoch):.3f}) and {versus_shallow:+.3f} "
            f"against the shallower {shallow.name} ({_at(s_acc, epoch):.3f})."
        ),
        evidence={
            "fixes": "degradation",
            "flag": c.flag,
            "epoch": epoch,
            "shallow": shallow.name,
            "train_acc_shallow": _at(s_acc, epoch),
            "train_acc_before": _at(before, epoch),
            "train_acc_after": _at(after, epoch),
            "train_acc_gain": gain,
        },
    )


def _gradient_fix(c: _FixCandidate) -> Finding | None:
    problem, without, with_, settings = c.problem, c.without, c.with_, c.settings
    after = gradflow_stats(with_.runs, "mean_abs", settings.window)
    if not after.epochs:
        return None
    values = dict(zip(after.layers, after.mean[-1], strict=True))
    was_below = [str(x) for x in problem.evidence["layers_below"] or []]  # type: ignore[union-attr]
    restored = [name for name in was_below if values.get(name, 0.0) >= settings.vanishing_threshold]
    first = str(problem.evidence["first_layer"])
    before_first = float(problem.evidence["first_layer_mean_abs"])  # type: ignore[arg-type]
    after_first = values.get(first, after.mean[-1][0])
    after_ratio = _ratio(after.mean[-1][0], after.mean[-1][-1])
    target = restored[0] if restored else first
    detail = (
        f"{len(restored)} of the {len(was_below)} layers below "
        f"{settings.vanishing_threshold:g} in {without.name} are above it in {with_.name}"
        if was_below
        else f"the first-to-last ratio is {after_ratio:.2g} in {with_.name}"
    )
    sentence = (
        f"{c.label} restored gradient flow to layer {target}: {detail}; {first} mean |g| "
        f"{before_first:.2g} -> {after_first:.2g}, first-to-last ratio "
        f"{float(problem.evidence['first_to_last_ratio'] or math.nan):.2g} -> "  # type: ignore[arg-type]
        f"{after_ratio:.2g} (epoch {after.epochs[-1]})."
    )
    return Finding(
        kind="fix",
        experiments=c.refs,
        sentence=sentence,
        evidence={
            "fixes": "vanishing_gradients",
            "flag": c.flag,
            "layer": target,
            "layers_restored": restored,
            "layers_restored_count": len(restored),
            "layers_below_before": len(was_below),
            "first_layer": first,
            "first_layer_mean_abs_before": before_first,
            "first_layer_mean_abs_after": after_first,
            "first_to_last_ratio_before": problem.evidence["first_to_last_ratio"],
            "first_to_last_ratio_after": after_ratio,
            "epoch": after.epochs[-1],
        },
    )


def _loss_gap(cell: CellResult, epoch: int) -> tuple[float, float, float]:
    """(validation loss, training loss, their difference) of ``cell`` at ``epoch``."""
    val = _at(metric_series(cell.runs, "val_loss"), epoch)
    train = _at(metric_series(cell.runs, "train_loss"), epoch)
    return val, train, val - train


def _overfitting_fix(c: _FixCandidate) -> Finding | None:
    before_val = metric_series(c.without.runs, "val_loss")
    after_val = metric_series(c.with_.runs, "val_loss")
    common = (set(before_val.epochs) & set(after_val.epochs)
              & set(metric_series(c.with_.runs, "train_loss").epochs))
    if not common:
        return None
    epoch = max(common)
    val_before, train_before, gap_before = _loss_gap(c.without, epoch)
    val_after, train_after, gap_after = _loss_gap(c.with_, epoch)
    if gap_before <= 0:
        return None  # nothing to shrink: validation is not behind training
    reduction = (gap_before - gap_after) / gap_before
    if reduction < c.settings.fix_min_gap_reduction:
        return None
    rise_before = float(c.problem.evidence["val_loss_rise"])  # type: ignore[arg-type]
    rise_after = _val_loss_rise(after_val)
    return Finding(
        kind="fix",
        experiments=c.refs,
        sentence=(
            f"{c.label} cured the overfitting: {c.with_.name}'s validation loss ends "
            f"{rise_after:+.1%} from its minimum where {c.without.name}'s rose "
            f"{rise_before:+.1%}, and at epoch {epoch} its validation loss exceeds its training "
            f"loss by {gap_after:.3f} against {gap_before:.3f} ({-reduction:+.0%})."
        ),
        evidence={
            "fixes": "overfitting",
            "flag": c.flag,
            "weight_decay": c.with_.spec.hyperparameters.weight_decay,
            "epoch": epoch,
            "val_loss_before": val_before,
            "train_loss_before": train_before,
            "gap_before": gap_before,
            "val_loss_after": val_after,
            "train_loss_after": train_after,
            "gap_after": gap_after,
            "gap_reduction": reduction,
            "val_loss_rise_before": rise_before,
            "val_loss_rise_after": rise_after,
        },
    )


def _val_loss_rise(val: SeriesStats) -> float:
    """Relative rise of the latest validation loss above its minimum (0 when it is the minimum)."""
    lowest = min(val.mean)
    return (val.mean[-1] - lowest) / abs(lowest) if lowest else math.inf


_FIXERS: dict[str, Callable[[_FixCandidate], Finding | None]] = {
    "vanishing_gradients": _gradient_fix,
    "not_training": _training_fix,
    "degradation": _degradation_fix,
}
