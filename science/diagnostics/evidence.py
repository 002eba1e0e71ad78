"""The numbers behind each finding, one typed model per kind of finding.

A detector measures a cell (or two sibling cells) and returns one of these, or nothing; the
sentence is written from it alone (:mod:`.sentences`), so what a finding says and the numbers it
shows cannot drift apart. In JSON (reports, the API) each is an object of its fields.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

ProblemKind = Literal[
    "vanishing_gradients", "exploding_gradients", "not_training", "degradation", "overfitting"
]
FindingKind = ProblemKind | Literal["fix"]
Window = Literal["last_batch", "epoch_mean"]
# The settings a fix turns on, as evidence names them.
LeverFlag = Literal["batch_norm", "residual", "weight_decay"]


class Evidence(BaseModel):
    """What every kind of evidence is: frozen numbers, no field beyond its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ClassVar[FindingKind]


# --- one cell's gradient flow ----------------------------------------------------------------


class GradientEvidence(Evidence):
    """A gradient-flow extreme held in each checked epoch: the layers past ``threshold``, or a
    first-to-last layer ratio of mean |g| past ``ratio_threshold``."""

    epoch: int
    epochs_checked: list[int]
    threshold: float
    ratio_threshold: float
    layers_total: int
    first_to_last_ratio: float
    seeds: int
    window: Window


class VanishingEvidence(GradientEvidence):
    """Where the flow dies: the layers below the threshold and the ends of the network."""

    kind: ClassVar[FindingKind] = "vanishing_gradients"
    layers_below: list[str]
    layers_below_count: int
    first_layer: str
    first_layer_mean_abs: float
    last_layer: str
    last_layer_mean_abs: float


class ExplodingEvidence(GradientEvidence):
    """Where the flow blows up: the layers above the threshold and the largest one."""

    kind: ClassVar[FindingKind] = "exploding_gradients"
    layers_above: list[str]
    largest_layer: str
    largest_mean_abs: float


# --- one cell's learning curves -------------------------------------------------------------


class NotTrainingEvidence(Evidence):
    kind: ClassVar[FindingKind] = "not_training"
    epoch: int
    classes: int
    train_loss: float
    ln_classes: float
    train_acc: float
    val_acc: float | None
    chance: float
    train_loss_drop: float
    prior_fit_gain: float
    seeds: int


class OverfittingEvidence(Evidence):
    kind: ClassVar[FindingKind] = "overfitting"
    start_epoch: int
    best_val_epoch: int
    best_val_loss: float
    last_epoch: int
    last_val_loss: float
    val_loss_rise: float
    train_loss_at_best: float
    last_train_loss: float
    seeds: int


# --- two depth siblings ---------------------------------------------------------------------


class DegradationEvidence(Evidence):
    kind: ClassVar[FindingKind] = "degradation"
    epoch: int
    shallow: str
    deep: str
    shallow_train_acc: float
    deep_train_acc: float
    gap: float
    epochs_lower: int
    epochs_compared: int


# --- fixes: a sibling with one setting turned on no longer has the problem ------------------


class FixEvidence(Evidence):
    """Which problem went away, by turning on which setting, read at which epoch."""

    kind: ClassVar[FindingKind] = "fix"
    fixes: ProblemKind
    flag: LeverFlag
    epoch: int


class GradientFixEvidence(FixEvidence):
    fixes: Literal["vanishing_gradients"] = "vanishing_gradients"
    threshold: float
    layer: str
    layers_restored: list[str]
    layers_restored_count: int
    layers_below_before: int
    first_layer: str
    first_layer_mean_abs_before: float
    first_layer_mean_abs_after: float
    first_to_last_ratio_before: float
    first_to_last_ratio_after: float


class TrainingFixEvidence(FixEvidence):
    fixes: Literal["not_training"] = "not_training"
    train_acc_before: float
    train_acc_after: float
    train_acc_gain: float


class DegradationFixEvidence(FixEvidence):
    fixes: Literal["degradation"] = "degradation"
    shallow: str
    train_acc_shallow: float
    train_acc_before: float
    train_acc_after: float
    train_acc_gain: float


class OverfittingFixEvidence(FixEvidence):
    fixes: Literal["overfitting"] = "overfitting"
    weight_decay: float
    val_loss_before: float
    train_loss_before: float
    gap_before: float
    val_loss_after: float
    train_loss_after: float
    gap_after: float
    gap_reduction: float
    val_loss_rise_before: float
    val_loss_rise_after: float


ProblemEvidence = (
    VanishingEvidence
    | ExplodingEvidence
    | NotTrainingEvidence
    | OverfittingEvidence
    | DegradationEvidence
)
AnyFixEvidence = (
    GradientFixEvidence | TrainingFixEvidence | DegradationFixEvidence | OverfittingFixEvidence
)
AnyEvidence = ProblemEvidence | AnyFixEvidence
