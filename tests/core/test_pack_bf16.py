"""A pack trained in bf16 computes what each of its runs computes alone in bf16.

Under bf16 autocast a convolution's output is rounded to 8 bits of mantissa, so where the
fused (grouped) kernel and the lone one accumulate in a different order, an output element
can round the other way: a relative change of up to ``2**-8`` in that element, which the
layers below carry on. Measured on the first step (identical parameters, nothing amplified by
training yet), four runs of test_pack's VGG38 BN + residual, on an AVX2-only AMD EPYC (oneDNN
emulates bf16 there): losses within 1.6e-7 relative and the per-layer mean |g| within 0.007
decade (one layer 1.7% off). Bounds: ``1e-4`` on the loss and ``0.05`` decade per layer,
room for kernels that block differently (AMX). Later steps are left out: one step of
training amplifies the rounding chaotically (0.31 decade after the second step, as fp32's
reassociation is amplified in test_pack). The figures: bench/pack_precision_match.py.

The bounds tell precisions apart: the same runs in fp32 miss them on every seed (losses
2.5e-4 to 1.7e-3 relative, 0.15 to 0.2 decade on some layer), so a pack that quietly trained
in fp32, or in bf16 where its members did not, fails here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from gradlab.core.data import CifarArrays
from gradlab.core.pack import PackRun, fit_pack
from gradlab.core.training_loop import fit
from gradlab.science.records import EpochMetrics, GradFlowEpoch
from tests.core.test_pack import SEEDS, Keeper, pack_spec

FIRST_STEP_LOSS_RTOL = 1e-4
FIRST_STEP_GRADFLOW_DECADES = 0.05

FirstStep = tuple[EpochMetrics, GradFlowEpoch]


def first_steps_alone(data: CifarArrays, precision: str) -> list[FirstStep]:
    """Each run alone for one epoch (one step: test_pack's specs hold 10 images)."""
    steps = []
    for i, seed in enumerate(SEEDS):
        keeper = Keeper()
        result = fit(pack_spec(i, precision=precision, epochs=1), seed, data,
                     on_epoch_end=keeper)
        assert result.environment["precision"] == precision
        steps.append(keeper.calls[0])
    return steps


def close(ours: FirstStep, theirs: FirstStep) -> bool:
    loss_close = math.isclose(ours[0].train_loss, theirs[0].train_loss,
                              rel_tol=FIRST_STEP_LOSS_RTOL)
    flow = [np.log10(np.asarray(step[1].last_batch["mean_abs"])) for step in (ours, theirs)]
    return loss_close and float(np.max(np.abs(flow[0] - flow[1]))) <= FIRST_STEP_GRADFLOW_DECADES


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # As in test_pack: OpenMP barriers make these 38 tiny layers far slower on two threads of
    # a shared 2-core machine. Both sides of every comparison run alike.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def alone_bf16(synthetic_cifar: CifarArrays) -> list[FirstStep]:
    return first_steps_alone(synthetic_cifar, "bf16")


def test_each_run_of_a_bf16_pack_matches_it_alone_on_the_first_step(
        synthetic_cifar: CifarArrays, alone_bf16: list[FirstStep]) -> None:
    keepers = [Keeper() for _ in SEEDS]
    results = fit_pack([PackRun(pack_spec(i, precision="bf16", epochs=1), seed, keepers[i])
                        for i, seed in enumerate(SEEDS)], synthetic_cifar)
    assert [r.environment["precision"] for r in results] == ["bf16"] * len(SEEDS)
    for keeper, alone in zip(keepers, alone_bf16, strict=True):
        assert close(keeper.calls[0], alone), (keeper.calls[0][0], alone[0])


def test_the_bf16_tolerances_tell_fp32_apart(synthetic_cifar: CifarArrays,
                                            alone_bf16: list[FirstStep]) -> None:
    alone_fp32 = first_steps_alone(synthetic_cifar, "fp32")
    assert not any(close(fp32, bf16) for fp32, bf16 in zip(alone_fp32, alone_bf16, strict=True))
