"""Fused packs: each run of a pack matches the run trained alone; packs are deterministic and
resume bit for bit; a run that stops leaves the others training.

How close is "matches" (the tolerances below, measured when this test was written, CPU fp32).
A pack computes the same functions as the runs alone: a grouped convolution never mixes
groups, BatchNorm statistics are per channel, the head is block-diagonal, and each run's
gradient of the summed loss is its own. Only the order of float additions differs (oneDNN's
grouped kernels block and vectorise the reductions of a convolution, of its weight gradient
and of BatchNorm's statistics differently): float32 reassociation, a relative error of order
``sqrt(K) * 2**-24`` per reduction of K terms, a few 1e-7 to 1e-6 after 38 layers.

- First step (identical parameters, nothing amplified yet): losses within ``1e-5`` relative
  (observed <= 3e-7) and every gradient-flow statistic within ``1e-4`` (observed <= 8e-6).
- Later steps: the rounding differences are amplified by training itself. Adam divides each
  gradient by its own running magnitude, so an element whose gradient is at rounding level
  (the conv biases in front of BatchNorm have an exact gradient of 0: BN subtracts the batch
  mean) moves by +-lr depending on the sign of that noise; and 38 layers at batch 10 on random
  labels are chaotic. Observed after 4 steps: losses <= 1.3e-5 relative on an Intel Xeon
  (AMX) and 2.9e-4 on an AMD EPYC (Zen 4), whose oneDNN kernels block differently (bound
  ``1e-3``; another seed differs by 6e-2),
  single gradient statistics up to 35% on a few BatchNorm gammas (bound: within
  ``GRADFLOW_DECADES`` = 0.25 decade, i.e. the profile the diagnostics read on a log scale),
  and the parameters' difference <= ``PARAM_SHARE`` of the distance they travelled (the norm
  over all weights; observed below 1e-2, bound 5e-2).

The bounds still tell runs apart: another seed or another learning rate misses all of them
(``test_the_tolerances_tell_runs_apart``).
"""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import pytest
import torch

from gradlab.core import pack as pack_module
from gradlab.core.checkpoints import load_checkpoint
from gradlab.core.data import CifarArrays
from gradlab.core.pack import PackRun, fit_pack
from gradlab.core.training_loop import fit
from gradlab.science.fusion import fusion_key
from gradlab.science.records import (
    EpochDecision,
    EpochMetrics,
    GradFlowEpoch,
    RunOutcome,
    TrainingResult,
)
from gradlab.science.spec import ExperimentSpec
from tests.core.test_training_loop import AbandonedByAnotherThread

SEEDS = (0, 256, 512, 1024)
# Per-run hyperparameters: a pack must keep each run's own learning rate and weight decay.
LEARNING_RATES = (1e-3, 2e-3, 5e-4, 1e-3)
WEIGHT_DECAYS = (0.0, 1e-3, 1e-2, 1e-3)
FIRST_STEP_LOSS_RTOL = 1e-5
FIRST_STEP_GRADFLOW_RTOL = 1e-4
RTOL = 1e-3
GRADFLOW_DECADES = 0.25
PARAM_SHARE = 5e-2


def pack_spec(index: int, **hp: Any) -> ExperimentSpec:
    """VGG38 BN + residual, narrow, 10 images: one step per epoch, so epoch 0's gradient flow
    is the first step's (identical parameters), and 4 epochs are 4 steps. fp32: the
    tolerances above are fp32 reassociation's, whatever the CPU's bf16 units."""
    return ExperimentSpec.model_validate({
        "depth": 38, "width": 8, "batch_norm": True, "residual": True,
        "hyperparameters": {"epochs": 4, "batch_size": 10, "precision": "fp32",
                            "learning_rate": LEARNING_RATES[index],
                            "weight_decay": WEIGHT_DECAYS[index], **hp},
        "data": {"train_limit": 10, "val_limit": 20, "test_limit": 20},
    })


class Keeper:
    """An epoch callback that keeps metrics, gradient flow and every checkpoint; after epoch
    ``stop_after`` it answers ``decision``."""

    def __init__(self, stop_after: int | None = None,
                 decision: EpochDecision = EpochDecision.CANCEL) -> None:
        self.calls: list[tuple[EpochMetrics, GradFlowEpoch]] = []
        self.blobs: list[bytes] = []
        self.stop_after = stop_after
        self.decision = decision

    def __call__(self, metrics: EpochMetrics, gradflow: GradFlowEpoch,
                 checkpoint: Any) -> EpochDecision:
        self.calls.append((metrics, gradflow))
        self.blobs.append(checkpoint())
        if self.stop_after is None or metrics.epoch < self.stop_after:
            return EpochDecision.CONTINUE
        return self.decision


class LossSpy:
    """Collects the per-step losses the loop hands to its divergence check, per seed."""

    def __init__(self) -> None:
        self.windows: dict[int, list[list[float]]] = {seed: [] for seed in SEEDS}
        self.original = pack_module._leave_diverged

    def __call__(self, pack: pack_module.Pack, epoch: int, start: int, end: int) -> None:
        for member in pack.active:
            self.windows[member.run.seed].append(member.step_losses[start:end].tolist())
        self.original(pack, epoch, start, end)


def train_alone(data: CifarArrays, monkeypatch: pytest.MonkeyPatch,
                ) -> list[tuple[TrainingResult, Keeper, list[list[float]]]]:
    """Each run alone (a pack of one, its model unfused)."""
    out = []
    for i, seed in enumerate(SEEDS):
        spy, keeper = LossSpy(), Keeper()
        with monkeypatch.context() as patch:
            patch.setattr(pack_module, "_leave_diverged", spy)
            result = fit(pack_spec(i), seed, data, on_epoch_end=keeper)
        out.append((result, keeper, spy.windows[seed]))
    return out


def train_pack(data: CifarArrays, monkeypatch: pytest.MonkeyPatch, keepers: list[Keeper],
               resume: list[bytes] | None = None,
               ) -> tuple[list[TrainingResult], list[list[list[float]]]]:
    """A pack of the four runs; the per-step losses of each member, per epoch."""
    spy = LossSpy()
    runs = [PackRun(pack_spec(i), seed, keepers[i], None if resume is None else resume[i])
            for i, seed in enumerate(SEEDS)]
    with monkeypatch.context() as patch:
        patch.setattr(pack_module, "_leave_diverged", spy)
        results = fit_pack(runs, data)
    return results, [spy.windows[seed] for seed in SEEDS]


@pytest.fixture(scope="module")
def module_patch() -> Any:
    # One thread: on this 2-core machine, shared with other processes, OpenMP barriers made
    # the 38 tiny layers ~10x slower with two. Both sides of every comparison run alike.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        yield patch
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def alone(synthetic_cifar: CifarArrays, module_patch: pytest.MonkeyPatch) -> list[Any]:
    return train_alone(synthetic_cifar, module_patch)


@pytest.fixture(scope="module")
def packed(synthetic_cifar: CifarArrays, module_patch: pytest.MonkeyPatch) -> Any:
    keepers = [Keeper() for _ in SEEDS]
    results, steps = train_pack(synthetic_cifar, module_patch, keepers)
    return results, keepers, steps


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-12)


def test_runs_share_a_fusion_key_despite_their_own_hyperparameters() -> None:
    assert len({fusion_key(pack_spec(i)) for i in range(4)}) == 1
    other = pack_spec(0).with_updates({"hyperparameters.batch_size": 20})
    assert fusion_key(other) != fusion_key(pack_spec(0))
    with pytest.raises(ValueError, match="fusion key"):
        pack_module.fusable([PackRun(pack_spec(0), 0), PackRun(other, 1)])


def test_each_run_of_a_pack_matches_it_alone_step_by_step(alone: list[Any],
                                                          packed: Any) -> None:
    results, _, steps = packed
    for i in range(len(SEEDS)):
        alone_result, _, alone_steps = alone[i]
        assert results[i].status == alone_result.status == "succeeded"
        ours = [loss for window in steps[i] for loss in window]
        theirs = [loss for window in alone_steps for loss in window]
        assert len(ours) == len(theirs) == 4
        assert math.isclose(ours[0], theirs[0], rel_tol=FIRST_STEP_LOSS_RTOL)
        assert all(close(a, b) for a, b in zip(ours, theirs, strict=True)), (ours, theirs)
        for mine, other in zip(results[i].epochs, alone_result.epochs, strict=True):
            for name in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
                assert close(getattr(mine, name), getattr(other, name)), name


def _statistics(gradflow: GradFlowEpoch) -> list[float]:
    return [v for window in (gradflow.last_batch, gradflow.epoch_mean)
            for stat in sorted(window) for v in window[stat]]


def test_gradient_flow_of_each_run_matches_it_alone(alone: list[Any], packed: Any) -> None:
    results, _, _ = packed
    for i in range(len(SEEDS)):
        first, *later = zip(results[i].gradflow, alone[i][0].gradflow, strict=True)
        # 38 weight layers (convs and head) and 37 BatchNorm gammas
        assert first[0].layers == first[1].layers and len(first[0].layers) == 38 + 37
        pairs = zip(_statistics(first[0]), _statistics(first[1]), strict=True)
        assert all(math.isclose(a, b, rel_tol=FIRST_STEP_GRADFLOW_RTOL) for a, b in pairs)
        for mine, other in later:
            for a, b in zip(_statistics(mine), _statistics(other), strict=True):
                assert a > 0 and b > 0 and abs(math.log10(a / b)) <= GRADFLOW_DECADES


def _initial_weights(index: int) -> dict[str, torch.Tensor]:
    from gradlab.core.architectures import build_model
    from gradlab.core.reproducibility import seed_everything

    seed_everything(SEEDS[index])
    return build_model(pack_spec(index)).state_dict()


def _parameter_share(after: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
                     start: dict[str, torch.Tensor]) -> float:
    """|after - reference| over |reference - start|, over every float tensor of the model."""
    names = [k for k, v in reference.items() if v.is_floating_point()]
    apart = torch.cat([(after[k] - reference[k]).flatten() for k in names]).norm()
    travelled = torch.cat([(reference[k] - start[k]).flatten() for k in names]).norm()
    return float(apart / travelled)


def test_parameters_after_training_match_each_run_alone(alone: list[Any], packed: Any) -> None:
    _, keepers, _ = packed
    for i in range(len(SEEDS)):
        mine = load_checkpoint(keepers[i].blobs[-1])
        theirs = load_checkpoint(alone[i][1].blobs[-1])
        assert mine["identity"] == theirs["identity"]
        assert mine["model"].keys() == theirs["model"].keys()
        share = _parameter_share(mine["model"], theirs["model"], _initial_weights(i))
        assert share <= PARAM_SHARE, (i, share)
        steps = [state["step"] for state in mine["optimizer"]["state"].values()]
        assert all(int(step) == 4 for step in steps)  # each run's own Adam, stepped 4 times


def test_the_tolerances_tell_runs_apart(alone: list[Any]) -> None:
    """The bounds above would catch a member that trained another run's numbers."""
    zero, three = alone[0], alone[3]  # same learning rate and decay, another seed
    assert not close(zero[0].epochs[-1].train_loss, three[0].epochs[-1].train_loss)
    # run 1 is run 0 with another seed, learning rate and decay: its weights are elsewhere
    share = _parameter_share(load_checkpoint(alone[1][1].blobs[-1])["model"],
                             load_checkpoint(zero[1].blobs[-1])["model"], _initial_weights(0))
    assert share > 10 * PARAM_SHARE
    own = load_checkpoint(zero[1].blobs[-1])["model"]
    one_step_less = load_checkpoint(zero[1].blobs[-2])["model"]
    assert _parameter_share(one_step_less, own, _initial_weights(0)) > 2 * PARAM_SHARE


def test_a_pack_resumes_from_its_checkpoints_bit_for_bit(
        synthetic_cifar: CifarArrays, module_patch: pytest.MonkeyPatch, packed: Any) -> None:
    results, keepers, steps = packed
    later = [Keeper() for _ in SEEDS]
    resumed, resumed_steps = train_pack(synthetic_cifar, module_patch, later,
                                        resume=[k.blobs[0] for k in keepers])
    for i in range(len(SEEDS)):
        assert resumed_steps[i] == steps[i][1:]  # epoch 1's losses, bit for bit
        assert [c[1] for c in later[i].calls] == [c[1] for c in keepers[i].calls[1:]]
        assert _without_seconds(resumed[i]) == _without_seconds(results[i])
        ours, theirs = load_checkpoint(later[i].blobs[-1]), load_checkpoint(keepers[i].blobs[-1])
        for name, tensor in ours["model"].items():
            assert torch.equal(tensor, theirs["model"][name]), name


def test_a_pack_checkpoint_resumes_alone(synthetic_cifar: CifarArrays, packed: Any) -> None:
    """Same format as alone: a packed run can finish on a worker that trains it unfused."""
    _, keepers, _ = packed
    result = fit(pack_spec(1), SEEDS[1], synthetic_cifar, resume_from=keepers[1].blobs[0])
    assert result.status == "succeeded" and [e.epoch for e in result.epochs] == [0, 1, 2, 3]


def _without_seconds(result: TrainingResult) -> dict[str, Any]:
    data = result.to_json_dict()
    data["epochs"] = [{k: v for k, v in e.items() if k != "seconds"} for e in data["epochs"]]
    data.pop("environment", None)
    return data


def test_a_cancelled_run_leaves_the_pack_and_the_others_finish(
        synthetic_cifar: CifarArrays, alone: list[Any]) -> None:
    keepers = [Keeper(), Keeper(stop_after=0), Keeper(), Keeper()]
    runs = [PackRun(pack_spec(i), seed, keepers[i]) for i, seed in enumerate(SEEDS)]
    results = fit_pack(runs, synthetic_cifar)
    assert [r.status for r in results] == ["succeeded", "cancelled", "succeeded", "succeeded"]
    assert [e.epoch for e in results[1].epochs] == [0] and results[1].test is None
    for i in (0, 2, 3):
        assert [e.epoch for e in results[i].epochs] == [0, 1, 2, 3]
        assert close(results[i].epochs[-1].train_loss, alone[i][0].epochs[-1].train_loss)


def test_abandon_mid_epoch_stops_every_member_and_the_pack_resumes_bit_for_bit(
        synthetic_cifar: CifarArrays, module_patch: pytest.MonkeyPatch, packed: Any) -> None:
    """One step per epoch: set before the loop's 3rd read, i.e. before epoch 2's step. Every
    member ends STOPPED at epoch 1 (epoch 2 discarded); resumed from their epoch-1
    checkpoints, the pack trains the uninterrupted pack's numbers bit for bit."""
    results, _, _ = packed
    keepers = [Keeper() for _ in SEEDS]
    abandon = AbandonedByAnotherThread(at=3)
    runs = [PackRun(pack_spec(i), seed, keepers[i]) for i, seed in enumerate(SEEDS)]
    stopped = fit_pack(runs, synthetic_cifar, abandon=abandon)
    assert abandon.reads == 3
    assert [r.status for r in stopped] == [RunOutcome.STOPPED] * len(SEEDS)
    for result, keeper in zip(stopped, keepers, strict=True):
        assert [e.epoch for e in result.epochs] == [0, 1] and result.test is None
        assert [m.epoch for m, _ in keeper.calls] == [0, 1]
    resumed, _ = train_pack(synthetic_cifar, module_patch, [Keeper() for _ in SEEDS],
                            resume=[k.blobs[-1] for k in keepers])
    for i in range(len(SEEDS)):
        assert _without_seconds(resumed[i]) == _without_seconds(results[i])


def test_stop_and_abandon_end_their_own_members_and_leave_the_others_outcomes(
        synthetic_cifar: CifarArrays) -> None:
    """Run 1 cancelled after epoch 0, run 2 asks to stop after epoch 0, then abandon at
    epoch 2: run 1 stays CANCELLED, run 2 STOPPED at epoch 0, runs 0 and 3 STOPPED at 1."""
    keepers = [Keeper(), Keeper(stop_after=0), Keeper(stop_after=0, decision=EpochDecision.STOP),
               Keeper()]
    runs = [PackRun(pack_spec(i), seed, keepers[i]) for i, seed in enumerate(SEEDS)]
    results = fit_pack(runs, synthetic_cifar, abandon=AbandonedByAnotherThread(at=3))
    assert [r.status for r in results] == [RunOutcome.STOPPED, RunOutcome.CANCELLED,
                                           RunOutcome.STOPPED, RunOutcome.STOPPED]
    assert [[e.epoch for e in r.epochs] for r in results] == [[0, 1], [0], [0], [0, 1]]


def test_a_diverged_run_leaves_the_pack_and_the_others_finish(
        synthetic_cifar: CifarArrays, alone: list[Any]) -> None:
    """A NaN in run 2's first convolution flows through every grouped layer of its slice; it
    must stay there: run 2 diverges at step 0, the others train their own numbers."""
    runs = [PackRun(pack_spec(i), seed) for i, seed in enumerate(SEEDS)]
    pack = pack_module.Pack(pack_module.build_members(runs, synthetic_cifar,
                                                      torch.device("cpu")),
                            torch.device("cpu"), cuda_graphs=False)
    with torch.no_grad():
        pack.members[2].trainer.model.entry.conv.weight[0, 0, 0, 0] = math.nan
    pack_module.train_pack_epochs(pack)
    results = [pack_module._result(m, torch.device("cpu")) for m in pack.members]
    assert results[2].status is RunOutcome.DIVERGED and results[2].divergence is not None
    assert (results[2].divergence.epoch, results[2].divergence.step) == (0, 0)
    assert not math.isfinite(results[2].divergence.loss) and results[2].epochs == []
    for i in (0, 1, 3):
        assert results[i].status == "succeeded"
        assert [e.epoch for e in results[i].epochs] == [0, 1, 2, 3]
        for mine, other in zip(results[i].epochs, alone[i][0].epochs, strict=True):
            assert close(mine.train_loss, other.train_loss)


_TWIN = """
import hashlib, json, numpy as np, torch
torch.set_num_threads(1)
from gradlab.core.data import CifarArrays
from gradlab.core.checkpoints import load_checkpoint
from gradlab.core.pack import PackRun, fit_pack
from tests.core.test_pack import SEEDS, Keeper, pack_spec
rng = np.random.default_rng(0)
data = CifarArrays("cifar100", rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8),
                   rng.integers(0, 100, 50_000).astype(np.int64),
                   rng.integers(0, 256, (1_000, 32, 32, 3), dtype=np.uint8),
                   rng.integers(0, 100, 1_000).astype(np.int64), "synthetic")
keepers = [Keeper() for _ in SEEDS]
results = fit_pack([PackRun(pack_spec(i), s, keepers[i]) for i, s in enumerate(SEEDS)], data)
digest = hashlib.sha256()
for result, keeper in zip(results, keepers):
    done = result.to_json_dict()
    epochs = [{k: v for k, v in e.items() if k != "seconds"} for e in done["epochs"]]
    digest.update(json.dumps([epochs, done["gradflow"]]).encode())
    for tensor in load_checkpoint(keeper.blobs[-1])["model"].values():
        digest.update(tensor.numpy().tobytes())
print(digest.hexdigest())
"""


def test_a_pack_is_deterministic_across_processes() -> None:
    """Two fresh processes, one pack each: the same bits (metrics, gradient flow, weights)."""
    from tests.core.conftest import REPO

    twins = [subprocess.Popen([sys.executable, "-c", _TWIN], cwd=REPO, text=True,
                              stdout=subprocess.PIPE) for _ in range(2)]
    digests = [twin.communicate(timeout=300)[0].strip() for twin in twins]
    assert [twin.returncode for twin in twins] == [0, 0]
    assert len(digests[0]) == 64 and digests[0] == digests[1]
