"""One run's training objects, built the same way alone or in a pack: model, optimiser,
gradient-flow recorder, autocast, its data as batches on the device; resuming it from a
checkpoint, and evaluating it (validation each epoch, the test set once at the end)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from gradlab.core.allocator import keep_freed_memory
from gradlab.core.architectures import VGG, build_model
from gradlab.core.augment import EvalBatches, TrainBatches
from gradlab.core.checkpoints import TrainingState, check_identity, training_state_from
from gradlab.core.data import CifarArrays, split
from gradlab.core.gradflow import GradFlowRecorder
from gradlab.core.optimization import make_optimizer
from gradlab.core.precision import Precision, autocast_for, checkpoint_precision, resolve_precision
from gradlab.core.reproducibility import restore_rng_state
from gradlab.science.records import TestResult
from gradlab.science.spec import ExperimentSpec

EVAL_BATCH_SIZE = 500  # evaluation has no gradients; larger batches are faster, same numbers


@dataclass
class Trainer:
    """The objects one run trains with."""

    model: VGG
    optimizer: torch.optim.Optimizer
    recorder: GradFlowRecorder
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager[None]]
    precision: Precision = "fp32"  # what the forward computes in (see core/precision.py)


@dataclass
class RunBatches:
    """One run's data on its device: shuffled augmented training batches, eval batches."""

    train: TrainBatches
    val: EvalBatches
    test: EvalBatches


def run_identity(spec: ExperimentSpec, seed: int, precision: Precision) -> dict[str, object]:
    """What a checkpoint must agree on to be resumed by this run (the name may differ): the
    spec, the seed and the precision it computes in (resume is exact within one precision)."""
    dump = spec.model_dump(mode="json", exclude={"name", "seeds"})
    return {"seed": seed, **dump, "precision": precision}


def run_precision(spec: ExperimentSpec, dev: torch.device,
                  checkpoint: dict[str, Any] | None) -> Precision:
    """The precision the run computes in: the spec's choice on ``dev``; a resumed ``auto`` run
    keeps the one it started in (the checkpoint's)."""
    choice = spec.hyperparameters.precision
    if checkpoint is not None and choice == "auto":
        return checkpoint_precision(checkpoint, dev)
    return resolve_precision(choice, dev)


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
    check_identity(_with_precision(payload, trainer.device), identity)
    trainer.model.load_state_dict(payload["model"])
    trainer.optimizer.load_state_dict(payload["optimizer"])
    restore_rng_state(payload["rng"], generator)
    return training_state_from(payload, trainer.device)


def _with_precision(payload: dict[str, Any], dev: torch.device) -> dict[str, Any]:
    """A checkpoint from before precision was recorded, read as what its code did (``auto``:
    bf16 on CUDA, fp32 on the CPU)."""
    stored = dict(payload["identity"])
    if "precision" not in stored:
        stored["precision"] = checkpoint_precision(payload, dev)
        stored["hyperparameters"] = {"precision": "auto", **stored.get("hyperparameters", {})}
    return {**payload, "identity": stored}


def build_trainer(spec: ExperimentSpec, dev: torch.device,
                  precision: Precision | None = None) -> Trainer:
    """The run's model (initialised from the global RNG), optimiser, recorder and autocast
    (``precision``: the spec's choice resolved on ``dev`` when not given)."""
    precision = precision or resolve_precision(spec.hyperparameters.precision, dev)
    # channels_last helps both oneDNN on the CPU and cuDNN; batches arrive in that layout.
    model = build_model(spec).to(dev).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), spec.hyperparameters)
    recorder = GradFlowRecorder(list(model.gradflow_parameters()))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        keep_freed_memory()  # no page faults for activations once warm (see allocator.py)
    return Trainer(model, optimizer, recorder, dev, autocast_for(precision, dev), precision)


@torch.inference_mode()
def evaluate(trainer: Trainer, batches: EvalBatches) -> tuple[float, float]:
    """(mean loss, accuracy) per image, eval mode."""
    trainer.model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=trainer.device)
    for x, y in batches:
        with trainer.autocast():
            logits = trainer.model(x)
        loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
        correct = (logits.argmax(1) == y).sum()
        totals += torch.stack([loss_sum.double(), correct.double()])
    loss, correct = (totals / max(batches.num_images, 1)).tolist()
    return float(loss), float(correct)


def evaluate_best_weights(trainer: Trainer, batches: EvalBatches,
                          state: TrainingState) -> TestResult:
    """The test set, evaluated once with the best-validation weights."""
    assert state.best_weights is not None
    trainer.model.load_state_dict(state.best_weights)
    test_loss, test_acc = evaluate(trainer, batches)
    return TestResult(loss=test_loss, acc=test_acc, best_epoch=state.best_epoch)
