"""A short real CIFAR-100 run on a slice learns: the loss falls below chance (ln 100)."""

from __future__ import annotations

import math
from pathlib import Path

from gradlab.core.data import load_cifar
from gradlab.core.training_loop import fit
from gradlab.science.spec import ExperimentSpec

CHANCE_LOSS = math.log(100)


def test_vgg08_bn_learns_on_a_slice_of_real_cifar100(real_data_dir: Path) -> None:
    spec = ExperimentSpec(
        depth=8,
        batch_norm=True,
        hyperparameters={"epochs": 3, "learning_rate": 3e-3, "lr_schedule": "constant"},
        data={"train_limit": 2000, "val_limit": 500, "test_limit": 500},
    )
    result = fit(spec, 0, load_cifar(real_data_dir))
    assert result.status == "succeeded"
    losses = [e.train_loss for e in result.epochs]
    assert losses[-1] < losses[0]
    assert losses[-1] < CHANCE_LOSS - 0.15
    assert result.epochs[-1].val_loss < CHANCE_LOSS
    assert result.test is not None and result.test.acc > 0.02  # twice chance on held-out images
