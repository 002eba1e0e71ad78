"""Every finding's sentence, written from its evidence and the experiments it names alone.

One function per kind of evidence; :func:`state` makes the finding. Wording and number
formats here are what reports, the API and the command print.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import assert_never

from gradlab.science.diagnostics.evidence import (
    AnyEvidence,
    DegradationEvidence,
    DegradationFixEvidence,
    ExplodingEvidence,
    GradientFixEvidence,
    LeverFlag,
    NotTrainingEvidence,
    OverfittingEvidence,
    OverfittingFixEvidence,
    TrainingFixEvidence,
    VanishingEvidence,
)
from gradlab.science.diagnostics.findings import ExperimentRef, Finding

Refs = Sequence[ExperimentRef]
LEVER_LABELS: dict[LeverFlag, str] = {
    "batch_norm": "BatchNorm",
    "residual": "residual connections",
    "weight_decay": "weight decay",
}


def state(evidence: AnyEvidence, experiments: Refs) -> Finding:
    """The finding of ``evidence`` about ``experiments`` (in :class:`Finding`'s order)."""
    return Finding(
        kind=evidence.kind,
        experiments=list(experiments),
        sentence=sentence(evidence, experiments),
        evidence=evidence,
    )


def sentence(e: AnyEvidence, refs: Refs) -> str:
    match e:
        case VanishingEvidence():
            return _vanishing(e, refs)
        case ExplodingEvidence():
            return _exploding(e, refs)
        case NotTrainingEvidence():
            return _not_training(e, refs)
        case OverfittingEvidence():
            return _overfitting(e, refs)
        case DegradationEvidence():
            return _degradation(e, refs)
        case GradientFixEvidence():
            return _gradient_fix(e, refs)
        case TrainingFixEvidence():
            return _training_fix(e, refs)
        case DegradationFixEvidence():
            return _degradation_fix(e, refs)
        case OverfittingFixEvidence():
            return _overfitting_fix(e, refs)
        case _:
            assert_never(e)


def _vanishing(e: VanishingEvidence, refs: Refs) -> str:
    if e.layers_below:
        where = (
            f"{e.layers_below_count} of {e.layers_total} layers (from {e.layers_below[0]} to "
            f"{e.layers_below[-1]}) kept mean |g| below {e.threshold:g}"
        )
    else:
        where = f"the first-to-last layer ratio of mean |g| stayed below {e.ratio_threshold:g}"
    return (
        f"Gradients vanish in {refs[0].name}: {where} in each of the last "
        f"{len(e.epochs_checked)} epoch(s); at epoch {e.epoch} {e.first_layer} has "
        f"{e.first_layer_mean_abs:.2g} against {e.last_layer_mean_abs:.2g} at {e.last_layer} "
        f"(ratio {e.first_to_last_ratio:.2g})."
    )


def _exploding(e: ExplodingEvidence, refs: Refs) -> str:
    where = (
        f"{len(e.layers_above)} of {e.layers_total} layers kept mean |g| above {e.threshold:g}"
        if e.layers_above
        else f"the first-to-last ratio stayed above {e.ratio_threshold:g}"
    )
    return (
        f"Gradients explode in {refs[0].name}: {where} in each of the last "
        f"{len(e.epochs_checked)} epoch(s); at epoch {e.epoch} the largest is "
        f"{e.largest_mean_abs:.2g} at {e.largest_layer} (first-to-last ratio "
        f"{e.first_to_last_ratio:.2g})."
    )


def _not_training(e: NotTrainingEvidence, refs: Refs) -> str:
    return (
        f"{refs[0].name} does not train: after {e.epoch + 1} epoch(s) its training loss is "
        f"{e.train_loss:.3f} (ln {e.classes} = {e.ln_classes:.3f}) and its training accuracy "
        f"{e.train_acc:.3f} (chance {e.chance:.3f})."
    )


def _overfitting(e: OverfittingEvidence, refs: Refs) -> str:
    return (
        f"{refs[0].name} overfits from epoch {e.start_epoch}: validation loss rose from "
        f"{e.best_val_loss:.3f} (epoch {e.best_val_epoch}) to {e.last_val_loss:.3f} (epoch "
        f"{e.last_epoch}, +{e.val_loss_rise:.1%}) while training loss fell from "
        f"{e.train_loss_at_best:.3f} to {e.last_train_loss:.3f}."
    )


def _degradation(e: DegradationEvidence, refs: Refs) -> str:
    shallow, deep = refs
    return (
        f"Degradation: {deep.name} (depth {deep.depth}) reaches a lower training accuracy "
        f"than its shallower sibling {shallow.name} (depth {shallow.depth}) at epoch "
        f"{e.epoch}: {e.deep_train_acc:.3f} against {e.shallow_train_acc:.3f} "
        f"(-{e.gap:.3f}; lower in {e.epochs_lower} of {e.epochs_compared} epochs)."
    )


def _gradient_fix(e: GradientFixEvidence, refs: Refs) -> str:
    without, with_ = refs[-2].name, refs[-1].name
    detail = (
        f"{e.layers_restored_count} of the {e.layers_below_before} layers below "
        f"{e.threshold:g} in {without} are above it in {with_}"
        if e.layers_below_before
        else f"the first-to-last ratio is {e.first_to_last_ratio_after:.2g} in {with_}"
    )
    return (
        f"{LEVER_LABELS[e.flag]} restored gradient flow to layer {e.layer}: {detail}; "
        f"{e.first_layer} mean |g| {e.first_layer_mean_abs_before:.2g} -> "
        f"{e.first_layer_mean_abs_after:.2g}, first-to-last ratio "
        f"{e.first_to_last_ratio_before:.2g} -> {e.first_to_last_ratio_after:.2g} "
        f"(epoch {e.epoch})."
    )


def _training_fix(e: TrainingFixEvidence, refs: Refs) -> str:
    return (
        f"{LEVER_LABELS[e.flag]} made the network train: {refs[-1].name} reaches training "
        f"accuracy {e.train_acc_after:.3f} at epoch {e.epoch} where {refs[-2].name} is stuck "
        f"at {e.train_acc_before:.3f} (+{e.train_acc_gain:.3f})."
    )


def _degradation_fix(e: DegradationFixEvidence, refs: Refs) -> str:
    versus_shallow = round(e.train_acc_after - e.train_acc_shallow, 3) + 0.0  # no "-0.000"
    return (
        f"{LEVER_LABELS[e.flag]} removed the degradation: {refs[-1].name} reaches training "
        f"accuracy {e.train_acc_after:.3f} at epoch {e.epoch}, +{e.train_acc_gain:.3f} over "
        f"{refs[-2].name} ({e.train_acc_before:.3f}) and {versus_shallow:+.3f} against the "
        f"shallower {e.shallow} ({e.train_acc_shallow:.3f})."
    )


def _overfitting_fix(e: OverfittingFixEvidence, refs: Refs) -> str:
    return (
        f"weight decay {e.weight_decay:g} cured the overfitting: {refs[-1].name}'s validation "
        f"loss ends {e.val_loss_rise_after:+.1%} from its minimum where {refs[-2].name}'s rose "
        f"{e.val_loss_rise_before:+.1%}, and at epoch {e.epoch} its validation loss exceeds "
        f"its training loss by {e.gap_after:.3f} against {e.gap_before:.3f} "
        f"({-e.gap_reduction:+.0%})."
    )
