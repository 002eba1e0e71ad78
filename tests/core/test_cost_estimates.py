"""The torch-free cost estimates (gradlab.science.layers) against the real thing: the bytes
autograd keeps for one training step, and the size of a real checkpoint with history."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from gradlab.core.architectures import build_model
from gradlab.core.checkpoints import TrainingState, save_checkpoint
from gradlab.core.optimization import make_optimizer
from gradlab.science.layers import activation_bytes, checkpoint_bytes, layer_names
from gradlab.science.records import EpochMetrics, GradFlowEpoch
from gradlab.science.spec import ExperimentSpec

SPECS = [
    {"depth": 8, "width": 32},
    {"depth": 38, "width": 32, "batch_norm": True, "residual": True},
    {"depth": 38, "width": 48, "hyperparameters": {"optimizer": "sgd"}},
    {"depth": 98, "width": 16, "batch_norm": True},
    {"depth": 200, "width": 8, "batch_norm": True, "residual": True},
    {"depth": 14, "width": 96, "batch_norm": True,
     "hyperparameters": {"optimizer": "sgd", "momentum": 0.0}},
]
TOLERANCE = 0.10


def _saved_bytes(spec: ExperimentSpec, batch: int) -> int:
    """Bytes of the distinct storages autograd saves for backward in one training step."""
    model = build_model(spec).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, spec.num_classes, (batch,))
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(model(x), y)
    return sum(storages.values())


def _checkpoint_size(spec: ExperimentSpec) -> int:
    model = build_model(spec)
    optimizer = make_optimizer(model.parameters(), spec.hyperparameters)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    layers = tuple(layer_names(spec))
    state = TrainingState()
    for epoch in range(spec.hyperparameters.epochs):
        metrics = EpochMetrics(epoch=epoch, train_loss=4.1 + epoch, train_acc=0.01 * epoch,
                               val_loss=4.2, val_acc=0.02 * epoch, lr=1e-3, seconds=12.5)
        stats = {s: [1e-3 * (j + 1) + epoch for j in range(len(layers))]
                 for s in ("mean_abs", "max_abs", "l2")}
        other = {s: [v * 1.5 for v in values] for s, values in stats.items()}
        state.record(metrics, GradFlowEpoch(epoch, layers, stats, other), model)
    blob = save_checkpoint(model=model, optimizer=optimizer, state=state,
                           rng={"torch": torch.get_rng_state()}, identity={"seed": 0})
    return len(blob)


@pytest.mark.parametrize("changes", SPECS, ids=lambda c: f"d{c['depth']}w{c['width']}")
def test_activation_estimate_is_within_ten_percent_of_what_autograd_saves(
    changes: dict[str, object],
) -> None:
    spec = ExperimentSpec.model_validate({**changes, "hyperparameters": {
        **changes.get("hyperparameters", {}), "batch_size": 8}})  # type: ignore[dict-item]
    estimate, measured = activation_bytes(spec), _saved_bytes(spec, 8)
    assert abs(estimate / measured - 1) < TOLERANCE, (estimate, measured)


@pytest.mark.parametrize("epochs", [1, 40])
@pytest.mark.parametrize("changes", SPECS, ids=lambda c: f"d{c['depth']}w{c['width']}")
def test_checkpoint_estimate_is_within_ten_percent_of_a_real_checkpoint(
    changes: dict[str, object], epochs: int
) -> None:
    spec = ExperimentSpec.model_validate({**changes, "hyperparameters": {
        **changes.get("hyperparameters", {}), "epochs": epochs}})  # type: ignore[dict-item]
    estimate, measured = checkpoint_bytes(spec), _checkpoint_size(spec)
    assert abs(estimate / measured - 1) < TOLERANCE, (estimate, measured)
