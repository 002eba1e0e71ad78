"""Precision: ``auto`` resolved through one steerable detection function, bf16 autocast training
on the CPU with fp32 parameters and gradients, the precision recorded per run, resume exact
within one precision, and no pack across precisions."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

from gradlab.core import precision as precision_module
from gradlab.core.checkpoints import CheckpointError, load_checkpoint
from gradlab.core.data import CifarArrays
from gradlab.core.pack import PackRun, fit_pack
from gradlab.core.precision import cpu_has_fast_bf16, resolve_precision
from gradlab.core.trainer import build_trainer
from gradlab.core.training_loop import fit
from gradlab.science.fusion import fusion_key
from gradlab.science.spec import ExperimentSpec
from tests.core.test_training_loop import Recorder, without_seconds

CPU = torch.device("cpu")


def spec(precision: str, epochs: int = 2) -> ExperimentSpec:
    return ExperimentSpec.model_validate({
        "depth": 8, "width": 8, "batch_norm": True,
        "hyperparameters": {"epochs": epochs, "batch_size": 20, "precision": precision},
        "data": {"train_limit": 60, "val_limit": 20, "test_limit": 20},
    })


@pytest.fixture
def bf16_units(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Steer the detection: ``bf16_units(True)`` is a CPU with bf16 units, False one without."""
    def steer(present: bool) -> None:
        monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: present)
    return steer


@pytest.mark.parametrize(("units", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_picks_bf16_on_a_cpu_with_bf16_units_and_fp32_without(
        bf16_units: Any, units: bool, expected: str) -> None:
    bf16_units(units)
    assert resolve_precision("auto", CPU) == expected
    trainer = build_trainer(spec("auto"), CPU)
    assert trainer.precision == expected
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with trainer.autocast():
        logits = trainer.model(x)
    assert logits.dtype == (torch.bfloat16 if units else torch.float32)


def test_auto_is_bf16_on_cuda_and_an_explicit_choice_is_kept(bf16_units: Any) -> None:
    bf16_units(False)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("bf16", CPU) == "bf16"
    bf16_units(True)
    assert resolve_precision("fp32", CPU) == "fp32"
    with pytest.raises(ValueError, match="auto, fp32 or bf16"):
        resolve_precision("fp16", CPU)


@pytest.mark.parametrize(("amx", "avx512_bf16", "onednn", "kernels", "expected"), [
    (False, False, True, True, False),  # AVX-512 without bf16 units: oneDNN would emulate bf16
    (True, False, True, True, True),
    (False, True, True, True, True),
    (True, True, False, True, False),  # no oneDNN: no bf16 kernels to use the units
    (True, True, True, False, False),  # oneDNN built without bf16 kernels for this CPU
])
def test_detection_asks_torch_for_the_bf16_units(monkeypatch: pytest.MonkeyPatch, amx: bool,
                                                 avx512_bf16: bool, onednn: bool, kernels: bool,
                                                 expected: bool) -> None:
    # Every answer torch gives is steered: the verdict must not depend on this machine's CPU.
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16,
                        raising=False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: onednn)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: kernels,
                        raising=False)
    assert cpu_has_fast_bf16() is expected


def test_bf16_trains_on_the_cpu_with_fp32_parameters_gradients_and_record(
        synthetic_cifar: CifarArrays) -> None:
    recorder = Recorder()
    bf16 = fit(spec("bf16"), 0, synthetic_cifar, on_epoch_end=recorder)
    fp32 = fit(spec("fp32"), 0, synthetic_cifar)
    assert bf16.status == fp32.status == "succeeded"
    assert (bf16.environment["precision"], fp32.environment["precision"]) == ("bf16", "fp32")
    ours = [e.train_loss for e in bf16.epochs]
    theirs = [e.train_loss for e in fp32.epochs]
    assert ours != theirs  # the forward computed in bf16 ...
    assert ours == pytest.approx(theirs, rel=0.05)  # ... and trained the same model
    # parameters, optimiser state and checkpoints stay fp32; gradient flow is recorded alike
    state = load_checkpoint(recorder.blobs[-1])
    floats = [t for t in state["model"].values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 for t in floats)
    moments = [t for s in state["optimizer"]["state"].values() for t in s.values()
               if t.is_floating_point() and t.dim() > 0]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    assert state["identity"]["precision"] == "bf16"
    assert bf16.gradflow[-1].layers == fp32.gradflow[-1].layers
    assert all(v > 0 for v in bf16.gradflow[-1].epoch_mean["mean_abs"])


def test_a_bf16_run_resumes_bit_for_bit(synthetic_cifar: CifarArrays) -> None:
    recorder = Recorder()
    whole = fit(spec("bf16", epochs=3), 0, synthetic_cifar, on_epoch_end=recorder)
    resumed = fit(spec("bf16", epochs=3), 0, synthetic_cifar, resume_from=recorder.blobs[0])
    assert without_seconds(resumed) == without_seconds(whole)


def test_an_auto_run_resumes_in_the_precision_it_started_in(
        synthetic_cifar: CifarArrays, bf16_units: Any) -> None:
    bf16_units(True)
    recorder = Recorder()
    whole = fit(spec("auto"), 0, synthetic_cifar, on_epoch_end=recorder)
    bf16_units(False)  # resumed on a CPU without bf16 units: it still finishes in bf16
    resumed = fit(spec("auto"), 0, synthetic_cifar, resume_from=recorder.blobs[0])
    assert resumed.environment["precision"] == "bf16"
    assert without_seconds(resumed) == without_seconds(whole)


def test_a_checkpoint_of_the_other_precision_is_refused(synthetic_cifar: CifarArrays) -> None:
    recorder = Recorder(stop_after=0)
    fit(spec("fp32"), 0, synthetic_cifar, on_epoch_end=recorder)
    with pytest.raises(CheckpointError, match="precision"):
        fit(spec("bf16"), 0, synthetic_cifar, resume_from=recorder.blobs[0])


def test_a_checkpoint_from_before_precision_was_recorded_resumes_as_fp32_on_the_cpu(
        synthetic_cifar: CifarArrays, bf16_units: Any) -> None:
    recorder = Recorder()
    whole = fit(spec("fp32"), 0, synthetic_cifar, on_epoch_end=recorder)
    payload = load_checkpoint(recorder.blobs[0])
    identity = dict(payload["identity"])
    identity.pop("precision")
    identity["hyperparameters"] = {k: v for k, v in identity["hyperparameters"].items()
                                   if k != "precision"}
    buffer = io.BytesIO()
    torch.save({**payload, "identity": identity}, buffer)
    bf16_units(True)  # auto would pick bf16 for a fresh run here; the old run was fp32
    resumed = fit(spec("auto"), 0, synthetic_cifar, resume_from=buffer.getvalue())
    assert resumed.environment["precision"] == "fp32"
    assert [e.train_loss for e in resumed.epochs] == [e.train_loss for e in whole.epochs]


def test_runs_that_differ_only_in_precision_never_pack(synthetic_cifar: CifarArrays,
                                                       bf16_units: Any) -> None:
    assert fusion_key(spec("fp32")) != fusion_key(spec("bf16"))
    with pytest.raises(ValueError, match="fusion key"):
        fit_pack([PackRun(spec("fp32"), 0), PackRun(spec("bf16"), 1)], synthetic_cifar)
    # the same spec (auto) resolved differently, one run resumed from a bf16 checkpoint
    bf16_units(True)
    recorder = Recorder(stop_after=0)
    fit(spec("auto"), 0, synthetic_cifar, on_epoch_end=recorder)
    bf16_units(False)
    with pytest.raises(ValueError, match="one precision"):
        fit_pack([PackRun(spec("auto"), 0, resume_from=recorder.blobs[0]),
                  PackRun(spec("auto"), 1, resume_from=_fp32_epoch0(synthetic_cifar))],
                 synthetic_cifar)


def _fp32_epoch0(data: CifarArrays) -> bytes:
    """Seed 1's checkpoint after epoch 0 of an ``auto`` run that resolved to fp32."""
    recorder = Recorder(stop_after=0)
    fit(spec("auto"), 1, data, on_epoch_end=recorder)
    return recorder.blobs[0]
