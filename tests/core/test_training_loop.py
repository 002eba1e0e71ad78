"""The training loop: resume bit-identity, divergence, cancellation, callbacks, checkpoints."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
import torch

from gradlab.core import trainer as trainer_module
from gradlab.core.architectures import VGG
from gradlab.core.checkpoints import CheckpointError, load_checkpoint
from gradlab.core.data import CifarArrays
from gradlab.core.training_loop import fit
from gradlab.science.records import (
    EpochDecision,
    EpochMetrics,
    GradFlowEpoch,
    RunOutcome,
    TrainingResult,
)
from gradlab.science.spec import ExperimentSpec


def tiny_spec(**overrides: Any) -> ExperimentSpec:
    base: dict[str, Any] = {
        "depth": 8,
        "batch_norm": True,  # BN running statistics must survive a resume too
        "hyperparameters": {"epochs": 3, "batch_size": 40, "weight_decay": 1e-3},
        "data": {"train_limit": 200, "val_limit": 60, "test_limit": 60},
    }
    base.update(overrides)
    return ExperimentSpec.model_validate(base)


class Recorder:
    """An epoch callback that keeps every checkpoint (and the last checkpoint thunk); after
    epoch ``stop_after`` it answers ``decision``."""

    def __init__(self, stop_after: int | None = None,
                 decision: EpochDecision = EpochDecision.CANCEL) -> None:
        self.calls: list[tuple[EpochMetrics, GradFlowEpoch]] = []
        self.blobs: list[bytes] = []
        self.thunk: Any = None
        self.stop_after = stop_after
        self.decision = decision

    def __call__(self, metrics: EpochMetrics, gradflow: GradFlowEpoch,
                 checkpoint: Any) -> EpochDecision:
        self.calls.append((metrics, gradflow))
        self.blobs.append(checkpoint())
        self.thunk = checkpoint
        if self.stop_after is None or metrics.epoch < self.stop_after:
            return EpochDecision.CONTINUE
        return self.decision


class AbandonedByAnotherThread(threading.Event):
    """The loop's ``abandon`` flag, set by another thread just before the loop's ``at``-th
    read of it (the setter is joined, so the moment is exact); counts the reads."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.reads = 0

    def is_set(self) -> bool:
        self.reads += 1
        if self.reads == self.at:
            setter = threading.Thread(target=self.set)
            setter.start()
            setter.join()
        return super().is_set()


def without_seconds(result: TrainingResult) -> dict[str, Any]:
    data = result.to_json_dict()
    data["epochs"] = [{k: v for k, v in e.items() if k != "seconds"} for e in data["epochs"]]
    return data


@pytest.fixture(scope="module")
def uninterrupted(synthetic_cifar: CifarArrays) -> tuple[TrainingResult, Recorder]:
    recorder = Recorder()
    result = fit(tiny_spec(), 5, synthetic_cifar, on_epoch_end=recorder)
    return result, recorder


def test_a_run_produces_every_epoch_gradflow_and_a_test_result(
        uninterrupted: tuple[TrainingResult, Recorder]) -> None:
    result, recorder = uninterrupted
    assert result.status == "succeeded"
    assert [e.epoch for e in result.epochs] == [0, 1, 2]
    assert [m.epoch for m, _ in recorder.calls] == [0, 1, 2]
    assert result.layers == tuple(result.gradflow[0].layers)
    assert len(result.layers) == 9 + 6  # VGG08 + a BN after each of the 6 reduction convs
    assert all(len(g.last_batch["mean_abs"]) == 15 for g in result.gradflow)
    assert result.test is not None and 0 <= result.test.best_epoch <= 2
    best = max(result.epochs, key=lambda e: e.val_acc)
    assert result.test.best_epoch == best.epoch  # first epoch with the best validation accuracy
    assert result.epochs[1].lr < result.epochs[0].lr  # cosine schedule
    assert [load_checkpoint(b)["epoch"] for b in recorder.blobs] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="moved on"):
        recorder.thunk()  # the model now holds the best weights (test set), not epoch 2's


@pytest.mark.parametrize("resume_epoch", [0, 1])
def test_resume_from_any_epoch_is_bit_identical(
        synthetic_cifar: CifarArrays, uninterrupted: tuple[TrainingResult, Recorder],
        resume_epoch: int) -> None:
    full, recorder = uninterrupted
    later = Recorder()
    resumed = fit(tiny_spec(), 5, synthetic_cifar, on_epoch_end=later,
                        resume_from=recorder.blobs[resume_epoch])
    assert [m.epoch for m, _ in later.calls] == list(range(resume_epoch + 1, 3))  # new only
    assert without_seconds(resumed) == without_seconds(full)  # floats compared exactly
    # ...and the final weights agree bit for bit, not just the metrics.
    final_full = load_checkpoint(recorder.blobs[-1])["model"]
    final_resumed = load_checkpoint(later.blobs[-1])["model"]
    assert all(torch.equal(final_full[k], final_resumed[k]) for k in final_full)


def test_a_different_seed_gives_different_numbers(
        synthetic_cifar: CifarArrays, uninterrupted: tuple[TrainingResult, Recorder]) -> None:
    spec = tiny_spec(hyperparameters={"epochs": 1, "batch_size": 40})
    first = fit(spec, 5, synthetic_cifar)
    other = fit(spec, 6, synthetic_cifar)
    assert first.epochs[0].train_loss != other.epochs[0].train_loss
    assert uninterrupted[0].epochs[0].train_loss != first.epochs[0].train_loss  # wd differs


def test_resuming_another_runs_checkpoint_is_refused(
        synthetic_cifar: CifarArrays, uninterrupted: tuple[TrainingResult, Recorder]) -> None:
    blob = uninterrupted[1].blobs[0]
    with pytest.raises(CheckpointError, match="seed"):
        fit(tiny_spec(), 6, synthetic_cifar, resume_from=blob)
    with pytest.raises(CheckpointError, match="learning_rate"):
        fit(tiny_spec(hyperparameters={"epochs": 3, "batch_size": 40, "weight_decay": 1e-3,
                                             "learning_rate": 0.01}),
                  5, synthetic_cifar, resume_from=blob)
    with pytest.raises(CheckpointError, match="not a readable"):
        fit(tiny_spec(), 5, synthetic_cifar, resume_from=b"garbage")


def test_callback_returning_cancel_cancels_after_that_epoch(synthetic_cifar: CifarArrays) -> None:
    recorder = Recorder(stop_after=0)
    result = fit(tiny_spec(), 5, synthetic_cifar, on_epoch_end=recorder)
    assert result.status is RunOutcome.CANCELLED
    assert [e.epoch for e in result.epochs] == [0]
    assert result.test is None


def test_callback_returning_stop_stops_after_that_epoch_and_resumes_bit_for_bit(
        synthetic_cifar: CifarArrays, uninterrupted: tuple[TrainingResult, Recorder]) -> None:
    recorder = Recorder(stop_after=0, decision=EpochDecision.STOP)
    stopped = fit(tiny_spec(), 5, synthetic_cifar, on_epoch_end=recorder)
    assert stopped.status is RunOutcome.STOPPED and stopped.to_json_dict()["status"] == "stopped"
    assert [e.epoch for e in stopped.epochs] == [0] and stopped.test is None
    resumed = fit(tiny_spec(), 5, synthetic_cifar, resume_from=recorder.blobs[-1])
    assert without_seconds(resumed) == without_seconds(uninterrupted[0])


@pytest.mark.parametrize("answer", [True, False, None])
def test_a_callback_answering_anything_but_an_epoch_decision_is_refused(
        synthetic_cifar: CifarArrays, answer: object) -> None:
    spec = tiny_spec(hyperparameters={"epochs": 2, "batch_size": 40},
                     data={"train_limit": 40, "val_limit": 20, "test_limit": 20})
    with pytest.raises(TypeError, match="EpochDecision"):
        fit(spec, 5, synthetic_cifar, on_epoch_end=lambda *_: answer)  # type: ignore[arg-type,return-value]


def test_abandon_set_by_another_thread_mid_epoch_stops_at_the_next_step(
        synthetic_cifar: CifarArrays, uninterrupted: tuple[TrainingResult, Recorder]) -> None:
    """200 images in batches of 40: 5 steps per epoch. Set before the loop's 8th read, i.e.
    before step 2 of epoch 1: epoch 1 is discarded, the run ends STOPPED at epoch 0, and
    epoch 0's checkpoint resumes to the uninterrupted run's numbers bit for bit."""
    abandon = AbandonedByAnotherThread(at=8)
    recorder = Recorder()
    stopped = fit(tiny_spec(), 5, synthetic_cifar, on_epoch_end=recorder, abandon=abandon)
    assert abandon.reads == 8  # read before every step, and training stopped at once
    assert stopped.status is RunOutcome.STOPPED and stopped.test is None
    assert [e.epoch for e in stopped.epochs] == [0] == [m.epoch for m, _ in recorder.calls]
    assert [g.epoch for g in stopped.gradflow] == [0]
    assert without_seconds(stopped)["epochs"][0] == without_seconds(uninterrupted[0])["epochs"][0]
    with pytest.raises(RuntimeError, match="after the model moved on"):
        recorder.thunk()  # the model is no longer epoch 0's: no checkpoint of it now
    later = Recorder()
    resumed = fit(tiny_spec(), 5, synthetic_cifar, on_epoch_end=later,
                  resume_from=recorder.blobs[-1])
    assert without_seconds(resumed) == without_seconds(uninterrupted[0])
    final = load_checkpoint(uninterrupted[1].blobs[-1])["model"]
    assert all(torch.equal(t, load_checkpoint(later.blobs[-1])["model"][k])
               for k, t in final.items())


def test_abandon_already_set_trains_nothing(synthetic_cifar: CifarArrays) -> None:
    abandon = threading.Event()
    abandon.set()
    result = fit(tiny_spec(), 5, synthetic_cifar, abandon=abandon)
    assert result.status is RunOutcome.STOPPED and result.epochs == [] and result.test is None


class _NaNAfter(VGG):
    """A VGG whose training forward returns NaN from its ``nan_at``-th call on."""

    nan_at = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.training:
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls > self.nan_at:
                return out * math.nan
        return out


@pytest.mark.parametrize(("nan_at", "epoch", "step"), [(0, 0, 0), (32, 1, 12)])
def test_nan_loss_stops_the_run_as_diverged_with_epoch_and_step(
        synthetic_cifar: CifarArrays, monkeypatch: pytest.MonkeyPatch,
        nan_at: int, epoch: int, step: int) -> None:
    def build(spec: ExperimentSpec) -> VGG:
        model = _NaNAfter(blocks_per_stage=spec.num_blocks, num_classes=100)
        model.nan_at = nan_at
        return model

    monkeypatch.setattr(trainer_module, "build_model", build)
    # 200 images in batches of 10: 20 steps per epoch, so training call 32 is epoch 1, step 12.
    spec = tiny_spec(batch_norm=False, hyperparameters={"epochs": 3, "batch_size": 10},
                     data={"train_limit": 200, "val_limit": 20, "test_limit": 20})
    result = fit(spec, 0, synthetic_cifar)
    assert result.status == "diverged"
    assert result.divergence is not None
    assert (result.divergence.epoch, result.divergence.step) == (epoch, step)
    assert math.isnan(result.divergence.loss)
    assert [e.epoch for e in result.epochs] == list(range(epoch))  # finished epochs only
    assert result.test is None


def test_a_huge_learning_rate_diverges(synthetic_cifar: CifarArrays) -> None:
    spec = tiny_spec(batch_norm=False, hyperparameters={
        "optimizer": "sgd", "learning_rate": 10.0, "momentum": 0.9, "epochs": 3,
        "batch_size": 20, "lr_schedule": "constant"})
    result = fit(spec, 0, synthetic_cifar)
    assert result.status == "diverged"
    assert result.divergence is not None and not math.isfinite(result.divergence.loss)


def test_environment_is_recorded(uninterrupted: tuple[TrainingResult, Recorder]) -> None:
    env = uninterrupted[0].environment
    assert env["device"] == "cpu" and env["torch"] == torch.__version__.split("+")[0]


def test_spec_and_data_must_agree(synthetic_cifar: CifarArrays) -> None:
    with pytest.raises(ValueError, match="cifar10"):
        fit(tiny_spec(data={"dataset": "cifar10"}), 0, synthetic_cifar)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            fit(tiny_spec(), 0, synthetic_cifar, device="cuda")


def test_checkpoint_holds_the_complete_state_as_safe_plain_data(
        uninterrupted: tuple[TrainingResult, Recorder]) -> None:
    payload = load_checkpoint(uninterrupted[1].blobs[1])  # torch.load(weights_only=True) inside
    assert payload["epoch"] == 1
    assert len(payload["history"]) == 2 and len(payload["gradflow"]) == 2
    assert {"exp_avg", "exp_avg_sq", "step"} <= set(payload["optimizer"]["state"][0])
    assert set(payload["rng"]) >= {"data", "torch", "numpy", "python"}
    assert payload["best_epoch"] in (0, 1) and payload["best_weights"] is not None
    assert "entry.bn.running_mean" in payload["model"]
    assert all(t.device.type == "cpu" for t in payload["model"].values())
    assert payload["identity"]["seed"] == 5


def test_cifar10_runs_with_a_ten_class_head(synthetic_cifar: CifarArrays) -> None:
    cifar10 = CifarArrays(
        dataset="cifar10",
        train_images=synthetic_cifar.train_images,
        train_labels=synthetic_cifar.train_labels % 10,
        test_images=synthetic_cifar.test_images,
        test_labels=synthetic_cifar.test_labels % 10,
        source="synthetic",
    )
    spec = tiny_spec(data={"dataset": "cifar10", "train_limit": 80, "val_limit": 20,
                           "test_limit": 20}, hyperparameters={"epochs": 1, "batch_size": 40})
    result = fit(spec, 0, cifar10)
    assert result.status == "succeeded"
    assert result.epochs[0].train_loss < 4.0  # ln(10) = 2.3 scale, not ln(100) = 4.6


def test_resume_is_bit_identical_with_sgd_nesterov_and_residual_blocks(
        synthetic_cifar: CifarArrays) -> None:
    spec = tiny_spec(depth=14, residual=True, reduction_skip="avgpool", hyperparameters={
        "optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.9, "nesterov": True,
        "epochs": 2, "batch_size": 50, "lr_schedule": "constant", "weight_decay": 1e-4},
        data={"train_limit": 100, "val_limit": 50, "test_limit": 50})
    recorder = Recorder()
    full = fit(spec, 2, synthetic_cifar, on_epoch_end=recorder)
    assert "momentum_buffer" in load_checkpoint(recorder.blobs[0])["optimizer"]["state"][0]
    resumed = fit(spec, 2, synthetic_cifar, resume_from=recorder.blobs[0])
    assert without_seconds(resumed) == without_seconds(full)
