"""Train N same-shaped runs as one fused pack (see ``fused_vgg``), each still its own run.

Each member is what ``training_loop.fit`` would build for it alone: its model initialised from
its own seed, its own optimiser (learning rate, schedule, weight decay), gradient-flow
recorder, data order and augmentation (its own generator over shared image tensors),
checkpoints in the alone format (a pack's checkpoint resumes alone and the other way round),
metrics, divergence check and cancellation. Only the training step is shared: one grouped
forward and backward over the stacked batches, the loss the sum of each run's mean
cross-entropy (parameters are disjoint, so each run's gradient is its own).

A member that diverges (checked every ``DIVERGENCE_CHECK_STEPS`` steps, as alone) or whose
``on_epoch_end`` returns False leaves the pack; the others go on with a pack rebuilt without
it. Validation and the final test pass run per member with the alone ``evaluate``.

CUDA: bf16 autocast as alone; ``cuda_graphs=True`` compiles the fused forward with
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
from gradlab.core.training_loop import (
    DIVERGENCE_CHECK_STEPS,
    RunBatches,
    Trainer,
    ask,
    build_trainer,
    evaluate,
    evaluate_best_weights,
    resume,
    run_batches,
    run_identity,
)
from gradlab.science.fusion import fusion_key
from gradlab.science.records import (
    OUTCOME_OF_DECISION,
    Divergence,
    EpochCallback,
    EpochDecision,
    EpochMetrics,
    RunOutcome,
    TrainingResult,
)
from gradlab.science.spec import ExperimentSpec


@dataclass
class PackRun:
    """One run to train in a pack: what ``fit`` takes for it alone."""

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
    # this epoch's per-step losses, on the device (read by tests and by the divergence check)
    step_losses: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    def checkpoint(self) -> bytes:
        """The alone format: a pack's checkpoint resumes alone and the other way round."""
        return save_checkpoint(model=self.trainer.model, optimizer=self.trainer.optimizer,
                               state=self.state, rng=capture_rng_state(self.generator),
                               identity=self.identity)


class Pack:
    """The members still training and the fused forward over them."""

    def __init__(self, members: list[Member], device: torch.device, cuda_graphs: bool) -> None:
        self.members = members
        self.device = device
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        self.active: list[Member] = []
        self.forward: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
        self.fused: FusedVGG | None = None
        self.rebuild()

    def rebuild(self) -> None:
        """(Re)build the fused forward over the members still running."""
        self.active = [m for m in self.members if m.outcome is None]
        if not self.active:
            return
        self.fused = FusedVGG([m.trainer.model for m in self.active])  # type: ignore[misc]
        self.forward = self.fused
        if self.cuda_graphs:
            self.forward = torch.compile(self.fused.forward, mode="reduce-overhead")

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return self.active[0].trainer.autocast()

    def drop(self, member: Member, outcome: RunOutcome) -> None:
        member.outcome = outcome
        self.rebuild()


def fusable(runs: list[PackRun]) -> None:
    """Raise ValueError unless ``runs`` can train as one pack."""
    if not runs:
        raise ValueError("a pack needs at least one run")
    keys = {fusion_key(r.spec) for r in runs}
    if len(keys) != 1:
        raise ValueError("the runs of a pack must share their fusion key "
                         "(model, batch size, epochs and data)")


def build_member(run: PackRun, data: CifarArrays, dev: torch.device,
                 shared: RunBatches | None) -> Member:
    """A run's trainer as ``fit`` builds it alone (same seed, same initialisation); its
    batches share ``shared``'s image tensors, with its own generator (order, augmentation)."""
    seed_everything(run.seed)
    trainer = build_trainer(run.spec, dev, compile_model=False)
    generator = data_generator(run.seed)
    if shared is None:
        batches = run_batches(run.spec, data, dev, generator)
    else:
        batches = RunBatches(train=shared.train.with_generator(generator), val=shared.val,
                             test=shared.test)
    identity = run_identity(run.spec, run.seed)
    state = TrainingState()
    if run.resume_from is not None:
        state = resume(trainer, generator, load_checkpoint(run.resume_from), identity)
    return Member(run, trainer, generator, batches, state, identity)


def build_members(runs: list[PackRun], data: CifarArrays, dev: torch.device) -> list[Member]:
    """Every run's member; the image tensors on the device are built once and shared."""
    first = build_member(runs[0], data, dev, None)
    members = [first] + [build_member(r, data, dev, first.batches) for r in runs[1:]]
    epochs = {m.state.last_epoch for m in members}
    if len(epochs) != 1:
        raise ValueError(f"the runs of a pack must resume at the same epoch, got {sorted(epochs)}")
    return members


def fit_pack(runs: list[PackRun], data: CifarArrays, *, device: str = "cpu",
             show_progress: bool = False, cuda_graphs: bool = True,
             abandon: threading.Event | None = None) -> list[TrainingResult]:
    """Train ``runs`` as one pack; a result per run, in order, as ``fit`` returns alone."""
    fusable(runs)
    if data.dataset != runs[0].spec.data.dataset:
        raise ValueError(f"spec wants {runs[0].spec.data.dataset} but the data is {data.dataset}")
    dev = resolve_device(device)
    pack = Pack(build_members(runs, data, dev), dev, cuda_graphs)
    train_pack_epochs(pack, show_progress, abandon)
    return [_result(member, dev) for member in pack.members]


def _result(member: Member, dev: torch.device) -> TrainingResult:
    status = member.outcome or RunOutcome.SUCCEEDED
    result = TrainingResult(status=status, layers=member.trainer.recorder.layers,
                            epochs=list(member.state.history),
                            gradflow=list(member.state.gradflow),
                            divergence=member.divergence,
                            environment={**describe_environment(dev)})
    if status is RunOutcome.SUCCEEDED and member.state.best_weights is not None:
        result.test = evaluate_best_weights(member.trainer, member.batches.test, member.state)
    return result


def train_pack_epochs(pack: Pack, show_progress: bool = False,
                      abandon: threading.Event | None = None) -> None:
    """Train every member from its next epoch to the last, dropping those that stop."""
    spec = pack.members[0].run.spec
    epochs = spec.hyperparameters.epochs
    start = pack.members[0].state.last_epoch + 1
    with EpochProgress(show_progress, epochs) as progress:
        for epoch in range(start, epochs):
            if not pack.active:
                return
            started = time.perf_counter()
            progress.start_epoch(epoch, len(pack.active[0].batches.train))
            outcomes = train_pack_epoch(pack, epoch, progress.step, abandon)
            if outcomes is None:  # abandoned: the epoch in progress is discarded
                for member in list(pack.active):
                    member.outcome = RunOutcome.STOPPED
                return
            for member, outcome in outcomes:
                _end_epoch(pack, member, epoch, outcome, time.perf_counter() - started, progress)


def _end_epoch(pack: Pack, member: Member, epoch: int, outcome: tuple[float, float],
               seconds: float, progress: EpochProgress) -> None:
    """Validation, gradient flow, state and the run's callback, for one member."""
    trainer = member.trainer
    val_loss, val_acc = evaluate(trainer, member.batches.val)
    gradflow = trainer.recorder.finish_epoch(epoch)
    metrics = EpochMetrics(epoch=epoch, train_loss=outcome[0], train_acc=outcome[1],
                           val_loss=val_loss, val_acc=val_acc,
                           lr=learning_rate_at(member.run.spec.hyperparameters, epoch),
                           seconds=seconds)
    member.state.record(metrics, gradflow, trainer.model)
    if len(pack.members) == 1:
        progress.end_epoch(metrics)
    decision = ask(member.run.on_epoch_end, metrics, gradflow, member.checkpoint)
    if decision is not EpochDecision.CONTINUE:
        pack.drop(member, OUTCOME_OF_DECISION[decision])


def _start_epoch(pack: Pack, epoch: int, steps: int) -> None:
    pack.fused.train(True)  # type: ignore[union-attr]
    for member in pack.active:
        set_learning_rate(member.trainer.optimizer,
                          learning_rate_at(member.run.spec.hyperparameters, epoch))
        member.trainer.recorder.start_epoch()
        member.step_losses = torch.zeros(steps, device=pack.device)


def train_pack_epoch(pack: Pack, epoch: int, on_step: Callable[[], None] = lambda: None,
                     abandon: threading.Event | None = None,
                     ) -> list[tuple[Member, tuple[float, float]]] | None:
    """One epoch of every active member: (member, (mean loss, mean accuracy)) for those that
    finished it; those that diverged leave the pack with their ``divergence`` set. None when
    ``abandon`` was set (read every step)."""
    steps = len(pack.active[0].batches.train)
    _start_epoch(pack, epoch, steps)
    accs = {id(m): torch.zeros(steps, device=pack.device) for m in pack.active}
    streams: dict[int, Iterator[tuple[torch.Tensor, torch.Tensor]]] = {
        id(m): m.batches.train.epoch() for m in pack.active}
    checked = 0
    for step in range(steps):
        if not pack.active:
            break
        if abandon is not None and abandon.is_set():
            return None
        losses, correct = _fused_step(pack, [next(streams[id(m)]) for m in pack.active])
        for i, member in enumerate(pack.active):
            member.step_losses[step] = losses[i]
            accs[id(member)][step] = correct[i]
        on_step()
        if (step + 1) % DIVERGENCE_CHECK_STEPS == 0 or step + 1 == steps:
            _drop_diverged(pack, epoch, checked, step + 1)
            checked = step + 1
    return _epoch_means(pack, accs)


def _fused_step(pack: Pack, batches: list[tuple[torch.Tensor, torch.Tensor]],
                ) -> tuple[torch.Tensor, torch.Tensor]:
    x = stack_inputs([b[0] for b in batches])
    y = torch.stack([b[1] for b in batches])  # [N, B]
    return fused_step(pack.forward, [m.trainer for m in pack.active], x, y, pack.autocast)


def fused_step(forward: Callable[[torch.Tensor], torch.Tensor], trainers: list[Trainer],
               x: torch.Tensor, y: torch.Tensor,
               autocast: Callable[[], contextlib.AbstractContextManager[None]],
               capture: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward, gradient flow and optimiser steps of the runs of ``trainers`` on
    stacked inputs ``x`` [B, 3N, H, W] and labels ``y`` [N, B]: their losses and accuracies,
    on the device (no host sync)."""
    count, size = y.shape
    with autocast():
        logits = forward(x)  # [N, B, K]
        losses = F.cross_entropy(logits.float().reshape(count * size, -1), y.reshape(-1),
                                 reduction="none").view(count, size).mean(1)
    for trainer in trainers:
        trainer.optimizer.zero_grad(set_to_none=True)
    # Each run's gradient is d(sum of losses)/d(its parameters) = d(its loss)/d(them).
    losses.sum().backward()
    for trainer in trainers:
        if capture:
            trainer.recorder.after_backward()
        trainer.optimizer.step()
    correct = (logits.detach().argmax(2) == y).float().mean(1)
    return losses.detach(), correct


def _drop_diverged(pack: Pack, epoch: int, start: int, end: int) -> None:
    for member in list(pack.active):
        window = member.step_losses[start:end]
        bad = (~torch.isfinite(window)).nonzero()
        if bad.numel():
            step = start + int(bad[0, 0])
            member.divergence = Divergence(epoch=epoch, step=step,
                                           loss=float(member.step_losses[step]))
            pack.drop(member, RunOutcome.DIVERGED)


def _epoch_means(pack: Pack, accs: dict[int, torch.Tensor],
                 ) -> list[tuple[Member, tuple[float, float]]]:
    """One host transfer for every member's epoch means."""
    if not pack.active:
        return []
    means = torch.stack([torch.stack([m.step_losses.mean(), accs[id(m)].mean()])
                         for m in pack.active]).tolist()
    return [(m, (float(loss), float(acc))) for m, (loss, acc) in zip(pack.active, means,
                                                                     strict=True)]
