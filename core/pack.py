"""The training loop: N same-shaped runs trained as one fused pack, each still its own run.

A run alone is a pack of one (``training_loop.fit``): there is no other loop. Per epoch: set
each run's closed-form learning rate, train over its shuffled augmented batches (train
loss/acc = mean over batches, train mode), evaluate it on its validation set (eval mode),
record its gradient flow, keep its best-validation weights, call its ``on_epoch_end``. At the
end the best weights of each run that succeeded are evaluated on its test set.

Each member is what a run alone is: its model initialised from its own seed, its own
optimiser (learning rate, schedule, weight decay), gradient-flow recorder, data order and
augmentation (its own generator over shared image tensors), checkpoints in one format (a
pack's checkpoint resumes alone and the other way round), metrics, divergence check and
outcome. Only the training step is shared: one forward and backward of the fused model
(``fused_vgg``; for one run, the model itself) over the stacked batches, the loss the sum of
each run's mean cross-entropy (parameters are disjoint, so each run's gradient is its own).

Hot loop: no host synchronisation per step. Losses and accuracies go into device buffers;
gradient statistics accumulate on the device; the host reads them once per epoch, and checks
the losses for NaN/inf every ``DIVERGENCE_CHECK_STEPS`` steps, so a diverged run leaves early
without a sync per step.

How a member ends (``RunOutcome``): it diverges (leaves the pack, the others go on with a
pack rebuilt without it); its callback returns CANCEL or STOP (it leaves after that epoch);
``abandon`` is set (read every step, a plain attribute read: the epoch in progress is
discarded and every member still training ends STOPPED); or it succeeds.

Precision: each run's spec choice resolved on the device (``core/precision.py``: bf16 autocast
on CUDA and on CPUs with bf16 units under ``auto``); a pack's runs share one. CUDA:
``cuda_graphs=True`` compiles the fused forward with
``torch.compile(mode="reduce-overhead")`` (CUDA graphs: the few hundred small kernels of a
step launched as one graph), recompiled when a member leaves. Data stay on the device.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from gradlab.core.checkpoints import TrainingState, load_checkpoint, save_checkpoint
from gradlab.core.data import CifarArrays
from gradlab.core.environment import describe_environment, resolve_device
from gradlab.core.fused_vgg import FusedVGG, stack_inputs
from gradlab.core.optimization import learning_rate_at, set_learning_rate
from gradlab.core.progress import EpochProgress
from gradlab.core.reproducibility import capture_rng_state, data_generator, seed_everything
from gradlab.core.trainer import (
    RunBatches,
    Trainer,
    build_trainer,
    evaluate,
    evaluate_best_weights,
    resume,
    run_batches,
    run_identity,
    run_precision,
)
from gradlab.science.fusion import fusion_key
from gradlab.science.records import (
    OUTCOME_OF_DECISION,
    CheckpointThunk,
    Divergence,
    EpochCallback,
    EpochDecision,
    EpochMetrics,
    GradFlowEpoch,
    RunOutcome,
    TrainingResult,
)
from gradlab.science.spec import ExperimentSpec

DIVERGENCE_CHECK_STEPS = 25
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class PackRun:
    """One run to train: its spec and seed, its epoch callback, the checkpoint it resumes."""

    spec: ExperimentSpec
    seed: int
    on_epoch_end: EpochCallback | None = None
    resume_from: bytes | None = None


@dataclass
class Member:
    """A run inside a pack: its trainer, data, state and outcome."""

    run: PackRun
    trainer: Trainer
    generator: torch.Generator
    batches: RunBatches
    state: TrainingState
    identity: dict[str, object]
    outcome: RunOutcome | None = None  # None while it trains
    divergence: Divergence | None = None
    # the model is the last finished epoch's (False from an epoch's start to its end, and once
    # the best weights are loaded for the test set)
    at_boundary: bool = True
    # this epoch's per-step losses and accuracies, on the device (read once per epoch)
    step_losses: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    step_accs: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    def checkpoint_thunk(self) -> CheckpointThunk:
        """The state at the end of the epoch just finished, serialised on demand; refused once
        the model has moved on (it would no longer be that epoch's: a checkpoint labelled with
        one epoch holding another's weights would resume to wrong numbers)."""
        epoch = self.state.last_epoch

        def checkpoint() -> bytes:
            if not self.at_boundary or self.state.last_epoch != epoch:
                raise RuntimeError(f"the checkpoint of epoch {epoch} was asked for after the "
                                   "model moved on: call it inside the epoch callback")
            return save_checkpoint(model=self.trainer.model, optimizer=self.trainer.optimizer,
                                   state=self.state, rng=capture_rng_state(self.generator),
                                   identity=self.identity)

        return checkpoint


class Pack:
    """The members still training and the fused forward over them."""

    def __init__(self, members: list[Member], device: torch.device, cuda_graphs: bool) -> None:
        self.members = members
        self.device = device
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        self.active = [m for m in members if m.outcome is None]
        self.forward = self._fused_forward()

    def rebuild(self) -> None:
        """Rebuild the fused forward over the members still training."""
        self.active = [m for m in self.members if m.outcome is None]
        if self.active:
            self.forward = self._fused_forward()

    def _fused_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        fused = FusedVGG([m.trainer.model for m in self.active])
        if self.cuda_graphs:
            return torch.compile(fused.forward, mode="reduce-overhead")
        return fused

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return self.active[0].trainer.autocast()

    def leave(self, member: Member, outcome: RunOutcome) -> None:
        member.outcome = outcome
        self.rebuild()

    def stop(self) -> None:
        """Every member still training ends STOPPED."""
        for member in self.active:
            member.outcome = RunOutcome.STOPPED
        self.active = []

    def step(self, batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step of every active member on its batch: losses and accuracies [N]."""
        x = stack_inputs([b[0] for b in batches])
        labels = [b[1] for b in batches]
        y = labels[0].unsqueeze(0) if len(labels) == 1 else torch.stack(labels)  # [N, B]
        return fused_step(self.forward, [m.trainer for m in self.active], x, y, self.autocast)


def fusable(runs: list[PackRun]) -> None:
    """Raise ValueError unless ``runs`` can train as one pack."""
    if not runs:
        raise ValueError("a pack needs at least one run")
    keys = {fusion_key(r.spec) for r in runs}
    if len(keys) != 1:
        raise ValueError("the runs of a pack must share their fusion key "
                         "(model, batch size, epochs, data and precision)")


def build_member(run: PackRun, data: CifarArrays, dev: torch.device,
                 shared: RunBatches | None) -> Member:
    """A run's trainer (its seed, so its initialisation); its batches share ``shared``'s
    image tensors, with its own generator (order, augmentation)."""
    seed_everything(run.seed)
    checkpoint = None if run.resume_from is None else load_checkpoint(run.resume_from)
    precision = run_precision(run.spec, dev, checkpoint)
    trainer = build_trainer(run.spec, dev, precision)
    generator = data_generator(run.seed)
    if shared is None:
        batches = run_batches(run.spec, data, dev, generator)
    else:
        batches = RunBatches(train=shared.train.with_generator(generator), val=shared.val,
                             test=shared.test)
    identity = run_identity(run.spec, run.seed, precision)
    state = TrainingState()
    if checkpoint is not None:
        state = resume(trainer, generator, checkpoint, identity)
    return Member(run, trainer, generator, batches, state, identity)


def build_members(runs: list[PackRun], data: CifarArrays, dev: torch.device) -> list[Member]:
    """Every run's member; the image tensors on the device are built once and shared."""
    first = build_member(runs[0], data, dev, None)
    members = [first] + [build_member(r, data, dev, first.batches) for r in runs[1:]]
    epochs = {m.state.last_epoch for m in members}
    if len(epochs) != 1:
        raise ValueError(f"the runs of a pack must resume at the same epoch, got {sorted(epochs)}")
    precisions = {m.trainer.precision for m in members}
    if len(precisions) != 1:
        raise ValueError("the runs of a pack must compute in one precision, "
                         f"got {sorted(precisions)}")
    return members


def fit_pack(runs: list[PackRun], data: CifarArrays, *, device: str = "cpu",
             show_progress: bool = False, cuda_graphs: bool = True,
             abandon: threading.Event | None = None) -> list[TrainingResult]:
    """Train ``runs`` as one pack: a result per run, in order (see the module docstring)."""
    fusable(runs)
    if data.dataset != runs[0].spec.data.dataset:
        raise ValueError(f"spec wants {runs[0].spec.data.dataset} but the data is {data.dataset}")
    dev = resolve_device(device)
    pack = Pack(build_members(runs, data, dev), dev, cuda_graphs)
    train_pack_epochs(pack, show_progress, abandon)
    return [_result(member, dev) for member in pack.members]


def _result(member: Member, dev: torch.device) -> TrainingResult:
    status = member.outcome or RunOutcome.SUCCEEDED
    test = None
    if status is RunOutcome.SUCCEEDED and member.state.best_weights is not None:
        member.at_boundary = False
        test = evaluate_best_weights(member.trainer, member.batches.test, member.state)
    return TrainingResult(status=status, layers=member.trainer.recorder.layers,
                          epochs=list(member.state.history),
                          gradflow=list(member.state.gradflow), test=test,
                          divergence=member.divergence,
                          environment={**describe_environment(dev),
                                       "precision": member.trainer.precision})


def train_pack_epochs(pack: Pack, show_progress: bool = False,
                      abandon: threading.Event | None = None) -> None:
    """Train every member from its next epoch to the last, until each has an outcome."""
    first = pack.members[0]
    epochs = first.run.spec.hyperparameters.epochs
    with EpochProgress(show_progress, epochs) as progress:
        for epoch in range(first.state.last_epoch + 1, epochs):
            if not pack.active:
                return
            started = time.perf_counter()
            progress.start_epoch(epoch, len(pack.active[0].batches.train))
            finished = train_pack_epoch(pack, epoch, progress.step, abandon)
            if finished is None:
                pack.stop()  # abandoned: the epoch in progress is discarded
                return
            for member, means in finished:
                _end_epoch(pack, member, epoch, means, time.perf_counter() - started, progress)


def _end_epoch(pack: Pack, member: Member, epoch: int, means: tuple[float, float],
               seconds: float, progress: EpochProgress) -> None:
    """Validation, gradient flow, state and the run's callback, for one member."""
    trainer = member.trainer
    member.at_boundary = True
    val_loss, val_acc = evaluate(trainer, member.batches.val)
    gradflow = trainer.recorder.finish_epoch(epoch)
    metrics = EpochMetrics(epoch=epoch, train_loss=means[0], train_acc=means[1],
                           val_loss=val_loss, val_acc=val_acc,
                           lr=learning_rate_at(member.run.spec.hyperparameters, epoch),
                           seconds=seconds)
    member.state.record(metrics, gradflow, trainer.model)
    if len(pack.members) == 1:
        progress.end_epoch(metrics)
    decision = ask(member.run.on_epoch_end, metrics, gradflow, member.checkpoint_thunk())
    if decision is not EpochDecision.CONTINUE:
        pack.leave(member, OUTCOME_OF_DECISION[decision])


def ask(callback: EpochCallback | None, metrics: EpochMetrics, gradflow: GradFlowEpoch,
        checkpoint: CheckpointThunk) -> EpochDecision:
    """The callback's decision; a value that is not an EpochDecision is refused, so that a
    callback of the old True/False contract fails loudly instead of being misread."""
    if callback is None:
        return EpochDecision.CONTINUE
    decision = callback(metrics, gradflow, checkpoint)
    if not isinstance(decision, EpochDecision):
        raise TypeError(f"on_epoch_end must return an EpochDecision, got {decision!r}")
    return decision


def _start_epoch(pack: Pack, epoch: int, steps: int) -> None:
    for member in pack.active:
        member.trainer.model.train()
        set_learning_rate(member.trainer.optimizer,
                          learning_rate_at(member.run.spec.hyperparameters, epoch))
        member.trainer.recorder.start_epoch()
        member.step_losses = torch.zeros(steps, device=pack.device)
        member.step_accs = torch.zeros(steps, device=pack.device)
        member.at_boundary = False


def train_pack_epoch(pack: Pack, epoch: int, on_step: Callable[[], None] = lambda: None,
                     abandon: threading.Event | None = None,
                     ) -> list[tuple[Member, tuple[float, float]]] | None:
    """One epoch of every active member: (member, (mean loss, mean accuracy)) for those that
    finished it; those that diverged leave the pack with their ``divergence`` set. None when
    ``abandon`` was set (read before every step: ``Event.is_set`` reads a flag, no sync)."""
    steps = len(pack.active[0].batches.train)
    _start_epoch(pack, epoch, steps)
    streams: dict[int, Iterator[Batch]] = {id(m): m.batches.train.epoch() for m in pack.active}
    checked = 0
    for step in range(steps):
        if not pack.active:
            break
        if abandon is not None and abandon.is_set():
            return None
        losses, correct = pack.step([next(streams[id(m)]) for m in pack.active])
        for i, member in enumerate(pack.active):
            member.step_losses[step] = losses[i]
            member.step_accs[step] = correct[i]
        on_step()
        if (step + 1) % DIVERGENCE_CHECK_STEPS == 0 or step + 1 == steps:
            _leave_diverged(pack, epoch, checked, step + 1)
            checked = step + 1
    return _epoch_means(pack)


def mean_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each run's mean cross-entropy over its batch: logits [N, B, K], labels [N, B] -> [N].
    One run takes cross_entropy's own mean, so a run alone keeps its numbers bit for bit; N
    runs one call over all their rows, then a mean per run."""
    count, size = y.shape
    flat = logits.float().reshape(count * size, -1)
    if count == 1:
        return F.cross_entropy(flat, y.reshape(-1)).reshape(1)
    return F.cross_entropy(flat, y.reshape(-1), reduction="none").view(count, size).mean(1)


def fused_step(forward: Callable[[torch.Tensor], torch.Tensor], trainers: list[Trainer],
               x: torch.Tensor, y: torch.Tensor,
               autocast: Callable[[], contextlib.AbstractContextManager[None]],
               capture: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward, gradient flow and optimiser steps of the runs of ``trainers`` on
    stacked inputs ``x`` [B, 3N, H, W] and labels ``y`` [N, B]: their losses and accuracies,
    on the device (no host sync)."""
    with autocast():
        logits = forward(x)  # [N, B, K]
        losses = mean_cross_entropy(logits, y)
    for trainer in trainers:
        trainer.optimizer.zero_grad(set_to_none=True)
    # Each run's gradient is d(sum of losses)/d(its parameters) = d(its loss)/d(them).
    torch.autograd.backward(losses.sum())
    for trainer in trainers:
        if capture:
            trainer.recorder.after_backward()
        trainer.optimizer.step()
    correct = (logits.detach().argmax(2) == y).float().mean(1)
    return losses.detach(), correct


def first_non_finite(values: torch.Tensor) -> int | None:
    """The index of the first NaN or infinite value (one host sync), or None."""
    bad = (~torch.isfinite(values)).nonzero()
    return None if bad.numel() == 0 else int(bad[0, 0])


def _leave_diverged(pack: Pack, epoch: int, start: int, end: int) -> None:
    for member in list(pack.active):
        bad = first_non_finite(member.step_losses[start:end])
        if bad is not None:
            step = start + bad
            member.divergence = Divergence(epoch=epoch, step=step,
                                           loss=float(member.step_losses[step]))
            pack.leave(member, RunOutcome.DIVERGED)


def _epoch_means(pack: Pack) -> list[tuple[Member, tuple[float, float]]]:
    """One host transfer for every member's epoch means."""
    if not pack.active:
        return []
    means = torch.stack([torch.stack([m.step_losses.mean(), m.step_accs.mean()])
                         for m in pack.active]).tolist()
    return [(m, (float(loss), float(acc)))
            for m, (loss, acc) in zip(pack.active, means, strict=True)]
