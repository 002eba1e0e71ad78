"""A run alone (a pack of one) computes exactly what a plain training loop computes.

The reference below is the loop gradlab ran for a run alone before packs and runs alone shared
one loop, written out plainly in this test: the model's forward op by op
(``test_fused_ops.reference_forward``, nothing fused, nothing in place, no ``forward_many``),
mean cross-entropy, backward, gradient-flow capture, the optimiser step; loss and accuracy
means over the epoch's batches; validation per image. ``fit`` must give the same metrics,
gradient flow, weights and optimiser state bit for bit (CPU, ``precision: fp32``: no autocast,
today's numbers whatever the CPU's bf16 units).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn import functional as F

from gradlab.core import pack as pack_module
from gradlab.core.architectures import VGG, build_model
from gradlab.core.augment import EvalBatches
from gradlab.core.checkpoints import load_checkpoint
from gradlab.core.data import CifarArrays
from gradlab.core.gradflow import GradFlowRecorder
from gradlab.core.optimization import learning_rate_at, make_optimizer, set_learning_rate
from gradlab.core.reproducibility import data_generator, seed_everything
from gradlab.core.trainer import run_batches
from gradlab.core.training_loop import fit
from gradlab.science.records import EpochDecision, EpochMetrics, GradFlowEpoch
from gradlab.science.spec import ExperimentSpec
from tests.core.test_fused_ops import reference_forward

VARIANTS = {
    "bn-adam": {"depth": 8, "batch_norm": True,
                "hyperparameters": {"epochs": 2, "batch_size": 40, "weight_decay": 1e-3,
                                    "precision": "fp32"},
                "data": {"train_limit": 120, "val_limit": 60, "test_limit": 20}},
    # no BN: the oneDNN conv + leaky ReLU path; residual skips; SGD with Nesterov momentum
    "plain-residual-sgd": {"depth": 14, "residual": True, "width": 16, "hyperparameters": {
        "optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.9, "nesterov": True,
        "epochs": 2, "batch_size": 25, "weight_decay": 1e-4, "precision": "fp32"},
        "data": {"train_limit": 100, "val_limit": 50, "test_limit": 20}},
}


@torch.inference_mode()
def _validate(model: VGG, batches: EvalBatches) -> tuple[float, float]:
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64)
    for x, y in batches:
        logits = reference_forward(model, x)
        loss_sum = F.cross_entropy(logits, y, reduction="sum")
        totals += torch.stack([loss_sum.double(), (logits.argmax(1) == y).sum().double()])
    loss, acc = (totals / batches.num_images).tolist()
    return float(loss), float(acc)


def plain_run(spec: ExperimentSpec, seed: int, data: CifarArrays,
              ) -> tuple[list[dict[str, float]], list[GradFlowEpoch], dict[str, Any]]:
    """Per-epoch metrics, gradient flow, and the final model and optimiser states."""
    seed_everything(seed)
    model = build_model(spec).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), spec.hyperparameters)
    recorder = GradFlowRecorder(list(model.gradflow_parameters()))
    batches = run_batches(spec, data, torch.device("cpu"), data_generator(seed))
    metrics, gradflow = [], []
    for epoch in range(spec.hyperparameters.epochs):
        lr = learning_rate_at(spec.hyperparameters, epoch)
        set_learning_rate(optimizer, lr)
        model.train()
        recorder.start_epoch()
        losses, accs = [], []
        for x, y in batches.train.epoch():
            logits = reference_forward(model, x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            recorder.after_backward()
            optimizer.step()
            losses.append(loss.detach())
            accs.append((logits.argmax(1) == y).float().mean())
        train_loss, train_acc = torch.stack([torch.stack(losses).mean(),
                                             torch.stack(accs).mean()]).tolist()
        val_loss, val_acc = _validate(model, batches.val)
        metrics.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                        "val_loss": val_loss, "val_acc": val_acc, "lr": lr})
        gradflow.append(recorder.finish_epoch(epoch))
    return metrics, gradflow, {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def _equal(a: Any, b: Any) -> bool:
    """Nested states compared exactly (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_run_alone_equals_the_plain_loop_bit_for_bit(synthetic_cifar: CifarArrays,
                                                       variant: str) -> None:
    spec = ExperimentSpec.model_validate(VARIANTS[variant])
    metrics, gradflow, final = plain_run(spec, 3, synthetic_cifar)
    blobs: list[bytes] = []

    def keep(_m: EpochMetrics, _g: GradFlowEpoch, checkpoint: Any) -> EpochDecision:
        blobs.append(checkpoint())
        return EpochDecision.CONTINUE

    result = fit(spec, 3, synthetic_cifar, on_epoch_end=keep)
    ours = [{k: v for k, v in e.to_dict().items() if k != "seconds"} for e in result.epochs]
    assert ours == metrics  # floats compared exactly
    assert result.gradflow == gradflow
    last = load_checkpoint(blobs[-1])
    assert _equal(last["model"], final["model"])
    assert _equal(last["optimizer"], final["optimizer"])


def test_a_run_alone_trains_through_the_pack_loop(synthetic_cifar: CifarArrays,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """One loop: ``fit`` trains a pack of one with ``fit_pack``'s epoch, step by step."""
    spec = ExperimentSpec.model_validate(VARIANTS["bn-adam"]).with_updates(
        {"hyperparameters.epochs": 1})
    sizes: list[int] = []
    original = pack_module.Pack.step

    def counting(pack: pack_module.Pack, batches: list[Any]) -> Any:
        sizes.append(len(batches))
        return original(pack, batches)

    monkeypatch.setattr(pack_module.Pack, "step", counting)
    fit(spec, 3, synthetic_cifar)
    assert sizes == [1, 1, 1]  # 120 images in batches of 40, each a step of a pack of one
