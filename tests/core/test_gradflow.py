"""Gradient flow: exact statistics, both windows, and the seed's vanishing-gradient finding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from gradlab.core.architectures import build_model
from gradlab.core.augment import EvalBatches
from gradlab.core.data import load_cifar
from gradlab.core.gradflow import GradFlowRecorder
from gradlab.science.gradflow_figure import plot_gradflow
from gradlab.science.spec import ExperimentSpec


def test_statistics_match_a_direct_computation_for_last_batch_and_epoch_mean() -> None:
    torch.manual_seed(0)
    model = build_model(ExperimentSpec(depth=8, batch_norm=True))
    named = list(model.gradflow_parameters())
    recorder = GradFlowRecorder(named)
    recorder.start_epoch()
    per_step = []
    for _ in range(3):
        model.zero_grad()
        F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.randint(0, 100, (4,))).backward()
        recorder.after_backward()
        per_step.append({
            "mean_abs": [w.grad.abs().mean().item() for _, w in named],
            "max_abs": [w.grad.abs().max().item() for _, w in named],
            "l2": [w.grad.norm().item() for _, w in named],
        })
    epoch = recorder.finish_epoch(4)
    assert epoch.epoch == 4 and epoch.layers == tuple(n for n, _ in named)
    for stat in ("mean_abs", "max_abs", "l2"):
        assert np.allclose(epoch.last_batch[stat], per_step[-1][stat], rtol=1e-5)
        mean = np.mean([s[stat] for s in per_step], axis=0)
        assert np.allclose(epoch.epoch_mean[stat], mean, rtol=1e-5)
    recorder.start_epoch()  # a new epoch starts from zero
    with pytest.raises(RuntimeError, match="before any training step"):
        recorder.finish_epoch(5)


def _first_and_last_mean_abs(spec: ExperimentSpec, x: torch.Tensor, y: torch.Tensor) -> tuple[
        float, float]:
    torch.manual_seed(0)
    model = build_model(spec).train()
    recorder = GradFlowRecorder(list(model.gradflow_parameters()))
    F.cross_entropy(model(x), y).backward()
    recorder.after_backward()
    values = recorder.finish_epoch(0).last_batch["mean_abs"]
    return values[0], values[-1]


def test_untrained_vgg38_vanishes_without_bn_and_not_with_it(real_data_dir: Path) -> None:
    data = load_cifar(real_data_dir)
    batch = EvalBatches(data.train_images[:32], data.train_labels[:32], batch_size=32,
                        device=torch.device("cpu"))
    x, y = next(iter(batch))
    first, last = _first_and_last_mean_abs(ExperimentSpec(depth=38), x, y)
    assert first < last * 1e-9  # the seed: ~1e-14 relative, far below Adam's eps
    first_bn, last_bn = _first_and_last_mean_abs(ExperimentSpec(depth=38, batch_norm=True), x, y)
    assert first_bn > last_bn * 1e-2
    first_res, last_res = _first_and_last_mean_abs(
        ExperimentSpec(depth=38, batch_norm=True, residual=True), x, y)
    assert first_res > last_res * 1e-2


def test_figure_has_one_line_per_epoch_and_saves_png(tmp_path: Path) -> None:
    layers = ["entry.conv", "entry.bn", "head.linear"]
    figure = plot_gradflow(layers, [0, 5], [[1e-3, 2e-3, 0.0], [1e-2, 1e-3, 1e-4]],
                           title="VGG08", log_scale=True)
    axes = figure.axes[0]
    assert len(axes.get_lines()) == 2
    assert [t.get_text() for t in axes.get_xticklabels()] == layers
    assert axes.get_yscale() == "log" and axes.get_title() == "VGG08"
    assert np.isnan(axes.get_lines()[0].get_ydata()[2])  # zero left out on a log axis
    out = tmp_path / "gradflow.png"
    figure.savefig(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_rejects_ragged_values() -> None:
    with pytest.raises(ValueError, match="row 0 has 1 values for 2 layers"):
        plot_gradflow(["a", "b"], [0], [[1.0]])
    with pytest.raises(ValueError, match="2 rows of values for 1 epochs"):
        plot_gradflow(["a"], [0], [[1.0], [2.0]])
