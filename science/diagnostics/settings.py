"""The thresholds of every diagnostic, each a named setting with its reason."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from gradlab.science.diagnostics.evidence import Window


class DiagnosticSettings(BaseModel):
    """The thresholds of every diagnostic (defaults documented per field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: Window = Field(
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
