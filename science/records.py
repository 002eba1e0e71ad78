"""What training produces, epoch by epoch: plain, typed records that cross layer boundaries.

The worker writes these to the database through the epoch callback; the CLI writes them to
``result.json``; reports and diagnostics read them back. They hold Python floats only (no
tensors), so they serialise to JSON and compare exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol

GRADFLOW_STATS: tuple[str, ...] = ("mean_abs", "max_abs", "l2")
GRADFLOW_WINDOWS: tuple[str, ...] = ("last_batch", "epoch_mean")
RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "diverged"]
# The one definition of the statuses, used by the store's constraints, the API and reports.
RUN_STATUSES: tuple[RunStatus, ...] = (
    "queued", "running", "succeeded", "failed", "cancelled", "diverged"
)
# A run in one of these never trains again (unless a study resubmission requeues a failure).
TERMINAL_RUN_STATUSES: tuple[RunStatus, ...] = ("succeeded", "failed", "cancelled", "diverged")


class RunOutcome(StrEnum):
    """How training ended (``TrainingResult.status``).

    The first three are also stored run statuses (same strings). STOPPED is not: training
    ended before its last epoch because a stop was asked (at an epoch boundary, or mid-epoch,
    when the epoch in progress is discarded); the run is unfinished, and whoever stopped it
    decides what becomes of it (the worker hands it back to the queue).
    """

    SUCCEEDED = "succeeded"
    DIVERGED = "diverged"
    CANCELLED = "cancelled"
    STOPPED = "stopped"


class EpochDecision(StrEnum):
    """What the epoch callback asks of the training loop after a finished epoch."""

    CONTINUE = "continue"
    CANCEL = "cancel"  # the run was cancelled: it ends CANCELLED
    STOP = "stop"  # stop now, at this boundary: it ends STOPPED (resumable from this epoch)


# The outcome of a run whose epoch callback ends its training.
OUTCOME_OF_DECISION: dict[EpochDecision, RunOutcome] = {
    EpochDecision.CANCEL: RunOutcome.CANCELLED,
    EpochDecision.STOP: RunOutcome.STOPPED,
}

# The stored status each outcome leaves: a stopped run is unfinished and waits to train again.
STATUS_AFTER: dict[RunOutcome, RunStatus] = {
    RunOutcome.SUCCEEDED: "succeeded",
    RunOutcome.DIVERGED: "diverged",
    RunOutcome.CANCELLED: "cancelled",
    RunOutcome.STOPPED: "queued",
}


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch's scalar metrics (train: mean over batches in train mode; val: eval mode)."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class GradFlowEpoch:
    """Per-layer gradient statistics of one epoch, layers in depth order.

    ``last_batch[stat][j]`` is layer ``j``'s statistic on the epoch's last training batch (what
    the seed study plotted); ``epoch_mean[stat][j]`` the same averaged over every step.
    """

    epoch: int
    layers: tuple[str, ...]
    last_batch: dict[str, list[float]]
    epoch_mean: dict[str, list[float]]

    def window(self, name: str) -> dict[str, list[float]]:
        if name not in GRADFLOW_WINDOWS:
            raise ValueError(f"window must be one of {GRADFLOW_WINDOWS}, got {name!r}")
        return self.last_batch if name == "last_batch" else self.epoch_mean


@dataclass(frozen=True)
class Divergence:
    """Where a run's loss first became NaN or infinite."""

    epoch: int
    step: int
    loss: float


@dataclass(frozen=True)
class TestResult:
    """The best-validation weights evaluated on the test set."""

    loss: float
    acc: float
    best_epoch: int


class EpochCallback(Protocol):
    """Called once after every finished epoch, in order.

    ``checkpoint`` serialises the complete training state (model, optimiser, schedule, every
    RNG, best-so-far) to bytes; it is lazy so a callback that does not save pays nothing, and
    valid only until training goes on (call it inside the callback). The return value says
    whether training goes on (``EpochDecision``); anything else is refused, so that a callback
    written for the old ``True``/``False`` contract fails loudly instead of being misread.
    Arguments are positional (the loop passes them so; callbacks name them as they like).
    """

    def __call__(
        self, metrics: EpochMetrics, gradflow: GradFlowEpoch, checkpoint: CheckpointThunk, /
    ) -> EpochDecision: ...


class CheckpointThunk(Protocol):
    def __call__(self) -> bytes: ...


@dataclass(frozen=True, kw_only=True)
class RunHistory:
    """What one run recorded: its layers in depth order, every finished epoch's metrics and
    gradient flow, and its best-validation weights' test result (None until it has one)."""

    layers: tuple[str, ...]
    epochs: list[EpochMetrics] = field(default_factory=list)
    gradflow: list[GradFlowEpoch] = field(default_factory=list)
    test: TestResult | None = None

    def gradflow_matrix(self, window: str, stat: str) -> list[list[float]]:
        """``[epoch][layer]`` values of one statistic in one window."""
        return [g.window(window)[stat] for g in self.gradflow]


@dataclass(frozen=True, kw_only=True)
class TrainingResult(RunHistory):
    """Everything one run (one seed of one experiment) produced: its history, how it ended,
    where it diverged, and what it ran on."""

    status: RunOutcome
    divergence: Divergence | None = None
    environment: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        """The ``result.json`` layout (``gradflow.<window>.<stat>[epoch][layer]``)."""
        return {
            "status": self.status.value,
            "epochs": [e.to_dict() for e in self.epochs],
            "gradflow": {
                "layers": list(self.layers),
                **{
                    w: {s: self.gradflow_matrix(w, s) for s in GRADFLOW_STATS}
                    for w in GRADFLOW_WINDOWS
                },
            },
            "test": None if self.test is None else asdict(self.test),
            "divergence": None if self.divergence is None else asdict(self.divergence),
            "environment": self.environment,
        }
