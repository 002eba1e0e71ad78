"""Checkpoints: the complete state of a run at an epoch boundary, as bytes.

Holds the model (parameters and BN running statistics), the optimiser (Adam moments and step
counts, SGD momentum), the schedule position (last finished epoch; the rate is a closed form of
the epoch), every RNG, the best-so-far weights and the whole metric and gradient-flow history.
Everything is stored as CPU tensors and plain Python values, so a checkpoint loads with
``torch.load(weights_only=True)`` (no pickled code) on any device.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import torch

from gradlab.science.records import EpochMetrics, GradFlowEpoch

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The bytes are not a gradlab checkpoint, or belong to another run."""


@dataclass
class TrainingState:
    """What a run carries from epoch to epoch besides the model and optimiser."""

    last_epoch: int = -1  # last finished epoch; -1 before the first
    history: list[EpochMetrics] = field(default_factory=list)
    gradflow: list[GradFlowEpoch] = field(default_factory=list)
    best_epoch: int = -1
    best_val_acc: float = float("-inf")
    best_weights: dict[str, torch.Tensor] | None = None

    def record(self, metrics: EpochMetrics, gradflow: GradFlowEpoch,
               model: torch.nn.Module) -> None:
        """A finished epoch: its metrics and gradient flow, and the weights if they are best."""
        self.offer(metrics.epoch, metrics.val_acc, model)
        self.history.append(metrics)
        self.gradflow.append(gradflow)
        self.last_epoch = metrics.epoch

    def offer(self, epoch: int, val_acc: float, model: torch.nn.Module) -> None:
        """Keep ``model``'s weights if this epoch's validation accuracy is the best so far."""
        if val_acc > self.best_val_acc:
            self.best_val_acc = val_acc
            self.best_epoch = epoch
            self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def save_checkpoint(*, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: TrainingState, rng: dict[str, Any], identity: dict[str, Any]) -> bytes:
    """Serialise the run at the end of ``state.last_epoch``; ``identity`` ties it to its run."""
    payload = {
        "format": FORMAT_VERSION,
        "identity": identity,
        "epoch": state.last_epoch,
        "model": _to_cpu(model.state_dict()),
        "optimizer": _to_cpu(optimizer.state_dict()),
        "rng": _to_cpu(rng),
        "best_epoch": state.best_epoch,
        "best_val_acc": state.best_val_acc,
        "best_weights": _to_cpu(state.best_weights),
        "history": [m.to_dict() for m in state.history],
        "gradflow": [
            {"epoch": g.epoch, "layers": list(g.layers), "last_batch": g.last_batch,
             "epoch_mean": g.epoch_mean}
            for g in state.gradflow
        ],
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def load_checkpoint(blob: bytes) -> dict[str, Any]:
    """The raw payload (CPU tensors and plain values); raises CheckpointError on bad bytes."""
    try:
        payload = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or truncated bytes
        raise CheckpointError(f"not a readable gradlab checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"not a gradlab checkpoint of format {FORMAT_VERSION}")
    return payload


def training_state_from(payload: dict[str, Any], device: torch.device) -> TrainingState:
    best = payload["best_weights"]
    return TrainingState(
        last_epoch=int(payload["epoch"]),
        history=[EpochMetrics(**m) for m in payload["history"]],
        gradflow=[
            GradFlowEpoch(epoch=g["epoch"], layers=tuple(g["layers"]),
                          last_batch=g["last_batch"], epoch_mean=g["epoch_mean"])
            for g in payload["gradflow"]
        ],
        best_epoch=int(payload["best_epoch"]),
        best_val_acc=float(payload["best_val_acc"]),
        best_weights=None if best is None else {k: v.to(device) for k, v in best.items()},
    )


def check_identity(payload: dict[str, Any], identity: dict[str, Any]) -> None:
    """Refuse to resume a run from another run's checkpoint (other seed, model or data)."""
    stored = payload["identity"]
    differing = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
    if differing:
        raise CheckpointError(
            "checkpoint belongs to a different run: "
            + "; ".join(f"{k}: checkpoint {stored.get(k)!r} vs now {identity.get(k)!r}"
                        for k in differing)
        )


__all__ = [
    "CheckpointError",
    "TrainingState",
    "check_identity",
    "load_checkpoint",
    "save_checkpoint",
    "training_state_from",
]
