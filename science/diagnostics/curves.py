"""Problems read off one cell's learning curves (across-seed means): not training, overfitting.

- not training: at the latest epoch the training loss is not below ln(classes) by more than
  ``not_training_loss_margin``, it fell by at most ``not_training_min_drop`` since the first
  epoch (plus what learning the class frequencies alone gives on that many training images,
  :func:`prior_fit_gain`), and training accuracy is at most ``not_training_acc_factor`` x
  chance.
- overfitting: validation loss risen by more than ``overfitting_min_rise`` (relative) above
  its minimum, at least ``overfitting_min_epochs`` epochs after it, while training loss fell.
"""

from __future__ import annotations

import math

from gradlab.science.aggregate import metric_series
from gradlab.science.diagnostics.evidence import NotTrainingEvidence, OverfittingEvidence
from gradlab.science.diagnostics.settings import DiagnosticSettings
from gradlab.science.spec import TRAIN_SPLIT_SIZE, ExperimentSpec
from gradlab.science.study_results import CellResult


def not_training(cell: CellResult, settings: DiagnosticSettings) -> NotTrainingEvidence | None:
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
    return NotTrainingEvidence(
        epoch=loss.epochs[-1],
        classes=classes,
        train_loss=last_loss,
        ln_classes=ln_c,
        train_acc=last_acc,
        val_acc=val_acc.mean[-1] if val_acc.mean else None,
        chance=chance,
        train_loss_drop=drop,
        prior_fit_gain=prior,
        seeds=loss.n[-1],
    )


def prior_fit_gain(spec: ExperimentSpec) -> float:
    """How far below ln(classes) a net that learns nothing from the images can still bring its
    training loss: by learning the class frequencies of its N training images, the best
    constant prediction, whose loss is their entropy, on average (C - 1) / (2N) nats below
    ln(C) (the plug-in entropy's bias). 0.05 on 1,000 CIFAR-100 images, 0.001 on all 47,500:
    a property of the data, so the same rule reads every scale alike."""
    size = spec.data.train_limit or TRAIN_SPLIT_SIZE
    return (spec.num_classes - 1) / (2 * size)


def overfitting(cell: CellResult, settings: DiagnosticSettings) -> OverfittingEvidence | None:
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
    return OverfittingEvidence(
        start_epoch=common[best + 1],
        best_val_epoch=common[best],
        best_val_loss=v[best],
        last_epoch=common[-1],
        last_val_loss=v[-1],
        val_loss_rise=rise,
        train_loss_at_best=t[best],
        last_train_loss=t[-1],
        seeds=val.n[-1],
    )
