"""The CUDA path (bf16 autocast, channels_last, optional torch.compile); runs only with a GPU."""

from __future__ import annotations

import math

import pytest
import torch

from gradlab.core.data import CifarArrays
from gradlab.core.training_loop import fit
from tests.core.test_training_loop import Recorder, tiny_spec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("compile_model", [False, True])
def test_cuda_run_trains_checkpoints_and_resumes(synthetic_cifar: CifarArrays,
                                                 compile_model: bool) -> None:
    recorder = Recorder()
    result = fit(tiny_spec(), 1, synthetic_cifar, device="cuda", on_epoch_end=recorder,
                       compile_model=compile_model)
    assert result.status == "succeeded" and result.environment["device"] == "cuda"
    assert all(math.isfinite(e.train_loss) for e in result.epochs)
    assert all(v >= 0 for g in result.gradflow for v in g.last_batch["mean_abs"])
    resumed = fit(tiny_spec(), 1, synthetic_cifar, device="cuda",
                        resume_from=recorder.blobs[0], compile_model=compile_model)
    assert [e.epoch for e in resumed.epochs] == [0, 1, 2]
    assert resumed.epochs[0] == result.epochs[0]  # history carried in the checkpoint


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_cuda_pack_trains_each_run_close_to_it_alone(synthetic_cifar: CifarArrays,
                                                     cuda_graphs: bool) -> None:
    """bf16 autocast on both sides: the pack's losses within bf16's rounding of the runs'."""
    from gradlab.core.pack import PackRun, fit_pack

    seeds = (1, 2, 3)
    packed = fit_pack([PackRun(tiny_spec(), s) for s in seeds], synthetic_cifar,
                      device="cuda", cuda_graphs=cuda_graphs)
    for seed, result in zip(seeds, packed, strict=True):
        alone = fit(tiny_spec(), seed, synthetic_cifar, device="cuda")
        assert result.status == "succeeded" and result.environment["device"] == "cuda"
        assert math.isclose(result.epochs[0].train_loss, alone.epochs[0].train_loss,
                            rel_tol=2e-2)
