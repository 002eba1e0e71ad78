"""One run per GPU: concurrency and per-child pinning, with the GPUs mocked (no GPU here)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gradlab.worker import devices


def _fake_nvidia_smi(monkeypatch: pytest.MonkeyPatch, gpus: int) -> None:
    listing = "".join(f"GPU {i}: NVIDIA H100 (UUID: GPU-{i})\n" for i in range(gpus))
    monkeypatch.setattr(devices.shutil, "which", lambda _name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(
        devices.subprocess,
        "run",
        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=listing, stderr=""),
    )


def test_each_child_is_pinned_to_its_own_gpu_with_mocked_nvidia_smi(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_nvidia_smi(monkeypatch, 4)
    parent: dict[str, str] = {}
    assert devices.worker_concurrency(None, parent) == 4
    assert devices.publish_gpus_to_children(parent) == ["0", "1", "2", "3"]

    seen = []
    for index in range(4):
        child = dict(parent)  # what fork hands each child
        assert devices.pin_child(index, child) == "cuda:0"
        seen.append(child["CUDA_VISIBLE_DEVICES"])
    assert seen == ["0", "1", "2", "3"]
    # A replacement child reuses its predecessor's index, hence its GPU.
    replacement = dict(parent)
    devices.pin_child(2, replacement)
    assert replacement["CUDA_VISIBLE_DEVICES"] == "2"


def test_pinning_respects_the_parents_cuda_visible_devices_with_mocked_gpus() -> None:
    parent = {"CUDA_VISIBLE_DEVICES": "5,7"}
    assert devices.worker_concurrency(None, parent) == 2
    devices.publish_gpus_to_children(parent)
    child = dict(parent)
    assert devices.pin_child(1, child) == "cuda:0"
    assert child["CUDA_VISIBLE_DEVICES"] == "7"


def test_no_gpu_means_cpu_mode_one_child_and_cuda_env_untouched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(devices.shutil, "which", lambda _name: None)
    env: dict[str, str] = {}
    assert devices.worker_concurrency(None, env) == 1
    devices.publish_gpus_to_children(env)
    child = dict(env)
    assert devices.pin_child(0, child) == "cpu"
    assert "CUDA_VISIBLE_DEVICES" not in child
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert devices.child_device("cpu", "cuda:0") == "cpu"
    assert devices.child_device("auto", "cuda:0") == "cuda:0"


def test_concurrency_below_one_is_refused_with_the_flag_named() -> None:
    with pytest.raises(ValueError, match="--concurrency must be at least 1, got 0"):
        devices.worker_concurrency(0, {})


def test_loading_the_celery_app_and_tasks_never_asks_cuda_in_the_parent() -> None:
    # Every torch.cuda entry point that may create a context records its call instead.
    code = """
import torch
calls = []
for name in ("is_available", "device_count", "init", "current_device", "set_device"):
    setattr(torch.cuda, name, lambda *a, _n=name, **k: calls.append(_n))
import gradlab.worker.celery_app, gradlab.worker.lifecycle as c
c.parent_publishes_gpus()
print(calls)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
