"""Optimisers and schedules: the seed's closed-form cosine, coupled Adam decay, SGD options."""

from __future__ import annotations

import math

import pytest
import torch

from gradlab.core.optimization import learning_rate_at, make_optimizer, set_learning_rate
from gradlab.science.spec import Hyperparameters


def test_cosine_schedule_at_epochs_0_50_99_of_100() -> None:
    hp = Hyperparameters()  # 1e-3 -> 2e-5 over 100 epochs
    assert learning_rate_at(hp, 0) == pytest.approx(1e-3, rel=1e-12)
    assert learning_rate_at(hp, 50) == pytest.approx((1e-3 + 2e-5) / 2, rel=1e-12)
    expected_99 = 2e-5 + (1e-3 - 2e-5) * (1 + math.cos(math.pi * 99 / 100)) / 2
    assert learning_rate_at(hp, 99) == pytest.approx(expected_99, rel=1e-12)
    assert 2e-5 < learning_rate_at(hp, 99) < 2.03e-5


def test_constant_schedule_and_epoch_bounds() -> None:
    hp = Hyperparameters(lr_schedule="constant", learning_rate=0.01, epochs=5)
    assert [learning_rate_at(hp, e) for e in range(5)] == [0.01] * 5
    with pytest.raises(ValueError, match="epoch"):
        learning_rate_at(hp, 5)


def test_adam_weight_decay_is_coupled_l2_not_decoupled() -> None:
    """With zero loss gradient, coupled decay feeds wd*p through Adam's normalisation: each
    weight moves by ~lr towards zero (AdamW would move it by lr*wd*p, a thousand times less)."""
    p = torch.nn.Parameter(torch.tensor([2.0, -0.5]))
    opt = make_optimizer([p], Hyperparameters(learning_rate=1e-3, weight_decay=1e-3))
    assert isinstance(opt, torch.optim.Adam)
    p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(p.detach(), torch.tensor([2.0 - 1e-3, -0.5 + 1e-3]), atol=1e-6)


def test_sgd_momentum_nesterov_and_set_learning_rate() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    hp = Hyperparameters(optimizer="sgd", learning_rate=0.1, momentum=0.8, nesterov=True,
                         weight_decay=0.01)
    opt = make_optimizer([p], hp)
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD)
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.8, True, 0.01)
    set_learning_rate(opt, 0.05)
    assert opt.param_groups[0]["lr"] == 0.05
