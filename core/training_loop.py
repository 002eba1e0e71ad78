"""Train one run (one seed of one experiment) the seed study's way, resumable bit for bit.

Per epoch: set the closed-form learning rate, train over shuffled augmented batches (train
loss/acc = mean over batches, train mode), evaluate on the validation set (eval mode), record
gradient flow, keep the best-validation weights, call ``on_epoch_end``. At the end the best
weights are evaluated on the test set.

Hot loop: no host synchronisation per step. Batch losses and accuracies go into device
buffers; gradient statistics accumulate on the device; the host reads them once per epoch
(and checks the losses for NaN/inf every ``DIVERGENCE_CHECK_STEPS`` steps, so a diverged run
stops early without a sync per step).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from gradlab.core.allocator import keep_freed_memory
from gradlab.core.architectures import build_model
from gradlab.core.augment import EvalBatches, TrainBatches
from gradlab.core.checkpoints import (
    TrainingState,
    check_identity,
    load_checkpoint,
    save_checkpoint,
    training_state_from,
)
from gradlab.core.data import CifarArrays, split
from gradlab.core.environment import describe_environment, resolve_device
from gradlab.core.gradflow import GradFlowRecorder
from gradlab.core.optimization import learning_rate_at, make_optimizer, set_learning_rate
from gradlab.core.progress import EpochProgress
from gradlab.core.reproducibility import (
    capture_rng_state,
    data_generator,
    restore_rng_state,
    seed_everything,
)
from gradlab.science.records import (
    OUTCOME_OF_DECISION,
    Divergence,
    EpochCallback,
    EpochDecision,
    EpochMetrics,
    GradFlowEpoch,
    RunOutcome,
    TestResult,
    TrainingResult,
)
from gradlab.science.spec import ExperimentSpec

DIVERGENCE_CHECK_STEPS = 25
EVAL_BATCH_SIZE = 500  # evaluation has no gradients; larger batches are faster, same numbers


@dataclass
class Trainer:
    """The objects one run trains with."""

    model: nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    recorder: GradFlowRecorder
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager[None]]


@dataclass
class RunBatches:
    """One run's data on its device: shuffled augmented training batches, eval batches."""

    train: TrainBatches
    val: EvalBatches
    test: EvalBatches


def run_identity(spec: ExperimentSpec, seed: int) -> dict[str, object]:
    """What a checkpoint must agree on to be resumed by this run (the name may differ)."""
    dump = spec.model_dump(mode="json", exclude={"name", "seeds"})
    return {"seed": seed, **dump}


def fit(
    spec: ExperimentSpec,
    seed: int,
    data: CifarArrays,
    *,
    device: str = "cpu",
    on_epoch_end: EpochCallback | None = None,
    resume_from: bytes | None = None,
    show_progress: bool = False,
    compile_model: bool = False,
    abandon: threading.Event | None = None,
) -> TrainingResult:
    """Train ``spec`` with ``seed`` on ``data``; see the module docstring and CONTRACTS.md."""
    if data.dataset != spec.data.dataset:
        raise ValueError(f"spec wants {spec.data.dataset} but the data is {data.dataset}")
    dev = resolve_device(device)
    seed_everything(seed)
    trainer = build_trainer(spec, dev, compile_model)
    generator = data_generator(seed)
    batches = run_batches(spec, data, dev, generator)
    identity = run_identity(spec, seed)
    state = TrainingState()
    if resume_from is not None:
        state = resume(trainer, generator, load_checkpoint(resume_from), identity)

    def checkpoint() -> bytes:
        return save_checkpoint(model=trainer.model, optimizer=trainer.optimizer, state=state,
                               rng=capture_rng_state(generator), identity=identity)

    status, divergence = train_epochs(trainer, batches, spec, state, on_epoch_end,
                                      checkpoint, show_progress, abandon)
    result = TrainingResult(status=status, layers=trainer.recorder.layers,
                            epochs=list(state.history), gradflow=list(state.gradflow),
                            divergence=divergence, environment=describe_environment(dev))
    if status is RunOutcome.SUCCEEDED and state.best_weights is not None:
        result.test = evaluate_best_weights(trainer, batches.test, state)
    return result


def run_batches(spec: ExperimentSpec, data: CifarArrays, dev: torch.device,
                generator: torch.Generator) -> RunBatches:
    """The run's split of ``data`` as batches on ``dev`` (training order from ``generator``)."""
    hp = spec.hyperparameters
    parts = split(data, spec.data)
    eval_size = max(hp.batch_size, EVAL_BATCH_SIZE)
    return RunBatches(
        train=TrainBatches(parts.train_images, parts.train_labels, batch_size=hp.batch_size,
                           device=dev, augment=spec.data.augment, generator=generator),
        val=EvalBatches(parts.val_images, parts.val_labels, batch_size=eval_size, device=dev),
        test=EvalBatches(parts.test_images, parts.test_labels, batch_size=eval_size, device=dev),
    )


def resume(trainer: Trainer, generator: torch.Generator, payload: dict[str, Any],
           identity: dict[str, object]) -> TrainingState:
    """Load a checkpoint's weights, optimiser, RNG streams and history into this run."""
    check_identity(payload, identity)
    trainer.model.load_state_dict(payload["model"])
    trainer.optimizer.load_state_dict(payload["optimizer"])
    restore_rng_state(payload["rng"], generator)
    return training_state_from(payload, trainer.device)


def train_epochs(trainer: Trainer, batches: RunBatches, spec: ExperimentSpec,
                 state: TrainingState, on_epoch_end: EpochCallback | None,
                 checkpoint: Callable[[], bytes], show_progress: bool,
                 abandon: threading.Event | None) -> tuple[RunOutcome, Divergence | None]:
    """Train from the epoch after ``state.last_epoch`` to the end: (status, divergence)."""
    hp = spec.hyperparameters
    with EpochProgress(show_progress, hp.epochs) as progress:
        for epoch in range(state.last_epoch + 1, hp.epochs):
            started = time.perf_counter()
            lr = learning_rate_at(hp, epoch)
            set_learning_rate(trainer.optimizer, lr)
            progress.start_epoch(epoch, len(batches.train))
            outcome = train_epoch(trainer, batches.train, epoch, progress.step, abandon)
            if outcome is None:
                return RunOutcome.STOPPED, None
            if isinstance(outcome, Divergence):
                return RunOutcome.DIVERGED, outcome
            val_loss, val_acc = evaluate(trainer, batches.val)
            gradflow = trainer.recorder.finish_epoch(epoch)
            metrics = EpochMetrics(epoch=epoch, train_loss=outcome[0], train_acc=outcome[1],
                                   val_loss=val_loss, val_acc=val_acc, lr=lr,
                                   seconds=time.perf_counter() - started)
            state.record(metrics, gradflow, trainer.model)
            progress.end_epoch(metrics)
            decision = ask(on_epoch_end, metrics, gradflow, checkpoint)
            if decision is not EpochDecision.CONTINUE:
                return OUTCOME_OF_DECISION[decision], None
    return RunOutcome.SUCCEEDED, None


def ask(callback: EpochCallback | None, metrics: EpochMetrics, gradflow: GradFlowEpoch,
        checkpoint: Callable[[], bytes]) -> EpochDecision:
    """The callback's decision; a value that is not an EpochDecision is refused."""
    if callback is None:
        return EpochDecision.CONTINUE
    decision = callback(metrics, gradflow, checkpoint)
    if not isinstance(decision, EpochDecision):
        raise TypeError(f"on_epoch_end must return an EpochDecision, got {decision!r}")
    return decision


def evaluate_best_weights(trainer: Trainer, batches: EvalBatches,
                          state: TrainingState) -> TestResult:
    """The test set, evaluated once with the best-validation weights."""
    assert state.best_weights is not None
    trainer.model.load_state_dict(state.best_weights)
    test_loss, test_acc = evaluate(trainer, batches)
    return TestResult(loss=test_loss, acc=test_acc, best_epoch=state.best_epoch)


def build_trainer(spec: ExperimentSpec, dev: torch.device, compile_model: bool) -> Trainer:
    # channels_last helps both oneDNN on the CPU and cuDNN; batches arrive in that layout.
    model = build_model(spec).to(dev, memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), spec.hyperparameters)
    recorder = GradFlowRecorder(list(model.gradflow_parameters()))
    forward: Callable[[torch.Tensor], torch.Tensor] = model
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True

        def autocast() -> contextlib.AbstractContextManager[None]:
            return torch.autocast("cuda", dtype=torch.bfloat16)

        if compile_model:
            forward = torch.compile(model)  # type: ignore[assignment]
    else:
        autocast = contextlib.nullcontext  # CPU trains in fp32, as the seed did
        keep_freed_memory()  # no page faults for activations once warm (see allocator.py)
    return Trainer(model, forward, optimizer, recorder, dev, autocast)


def train_epoch(trainer: Trainer, batches: TrainBatches, epoch: int,
                on_step: Callable[[], None], abandon: threading.Event | None = None,
                ) -> tuple[float, float] | Divergence | None:
    """One epoch of training: (mean batch loss, mean batch accuracy), or where it diverged;
    None when ``abandon`` was set (read every step)."""
    trainer.model.train()
    trainer.recorder.start_epoch()
    steps = len(batches)
    losses = torch.zeros(steps, device=trainer.device)
    accs = torch.zeros(steps, device=trainer.device)
    checked = 0
    for step, (x, y) in enumerate(batches.epoch()):
        if abandon is not None and abandon.is_set():
            return None
        with trainer.autocast():
            logits = trainer.forward(x)
            loss = F.cross_entropy(logits.float(), y)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.recorder.after_backward()
        trainer.optimizer.step()
        losses[step] = loss.detach()
        accs[step] = (logits.argmax(1) == y).float().mean()
        on_step()
        if (step + 1) % DIVERGENCE_CHECK_STEPS == 0 or step + 1 == steps:
            bad = _first_non_finite(losses[checked : step + 1])
            if bad is not None:
                return Divergence(epoch=epoch, step=checked + bad,
                                  loss=float(losses[checked + bad]))
            checked = step + 1
    both = torch.stack([losses.mean(), accs.mean()]).tolist()
    return float(both[0]), float(both[1])


def _first_non_finite(values: torch.Tensor) -> int | None:
    bad = (~torch.isfinite(values)).nonzero()
    return None if bad.numel() == 0 else int(bad[0, 0])


@torch.inference_mode()
def evaluate(trainer: Trainer, batches: EvalBatches) -> tuple[float, float]:
    """(mean loss, accuracy) per image, eval mode."""
    trainer.model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=trainer.device)
    for x, y in batches:
        with trainer.autocast():
            logits = trainer.forward(x)
        loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
        correct = (logits.argmax(1) == y).sum()
        totals += torch.stack([loss_sum.double(), correct.double()])
    loss, correct = (totals / max(batches.num_images, 1)).tolist()
    return float(loss), float(correct)
