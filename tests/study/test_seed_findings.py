"""The seed study's five findings on a constructed study shaped like it, each one present with
its problem and absent on the same study with that problem taken away (same thresholds)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gradlab.science.diagnostics import Finding, diagnose
from gradlab.science.study_results import CellResult
from tests.study.builders import HEALTHY, LAYERS, VANISHED, cell, seed_run, spec

EPOCHS = 6
FLAT = [4.606, 4.605, 4.605, 4.605, 4.605, 4.605]
FALLING = [4.0, 3.4, 3.0, 2.7, 2.5, 2.4]
RISING_VAL = [4.0, 3.5, 3.3, 3.4, 3.6, 3.9]  # minimum at epoch 2, then +18%
WD = {"hyperparameters.weight_decay": 1e-3}


def learner(train_acc: list[float], *, train_loss: list[float] = FALLING,
            val_loss: list[float] | None = None, gradients: list[float] = HEALTHY) -> object:
    return seed_run(0, train_loss=train_loss, train_acc=train_acc,
                    val_loss=val_loss or [v + 0.05 for v in train_loss],
                    gradients=[gradients] * EPOCHS, layers=LAYERS)


def seed_study(cure: str | None = None) -> list[CellResult]:
    """vgg08, vgg08-bn, vgg38, vgg38-bn, vgg38-bn-res and its weight-decay sibling; ``cure``
    takes one problem away (or one fix, where the fixing cell then keeps the problem)."""
    plain38 = seed_run(0, train_loss=FLAT, train_acc=[0.01] * EPOCHS,
                       gradients=[VANISHED] * EPOCHS, layers=LAYERS)
    if cure == "vanishing":
        plain38 = learner([0.01] * EPOCHS, train_loss=FLAT)  # stuck, but gradients flow
    if cure == "not_training":
        plain38 = seed_run(0, train_loss=FALLING, train_acc=[0.05, 0.1, 0.15, 0.2, 0.22, 0.24],
                           gradients=[VANISHED] * EPOCHS, layers=LAYERS)
    bn38_acc = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    if cure == "degradation":
        bn38_acc = [0.1, 0.2, 0.3, 0.4, 0.5, 0.55]  # as good as vgg08-bn
    bn38 = learner(bn38_acc, gradients=VANISHED if cure == "bn_fix" else HEALTHY)
    res_acc = [0.1, 0.25, 0.4, 0.5, 0.6, 0.7]
    if cure == "residual_fix":
        res_acc = [0.05, 0.1, 0.15, 0.2, 0.26, 0.32]  # still far below vgg08-bn
    res = learner(res_acc, train_loss=[4.0, 3.2, 2.6, 2.0, 1.5, 1.1],
                  val_loss=None if cure == "overfitting" else RISING_VAL)
    wd_val = RISING_VAL if cure == "weight_decay_fix" else [4.05, 3.5, 3.2, 3.0, 2.9, 2.85]
    wd = learner(res_acc, train_loss=[4.0, 3.3, 2.8, 2.5, 2.3, 2.2], val_loss=wd_val)
    return [
        cell(spec("vgg08", 8), learner([0.1, 0.2, 0.3, 0.35, 0.4, 0.42])),
        cell(spec("vgg08-bn", 8, bn=True), learner([0.1, 0.2, 0.3, 0.4, 0.5, 0.55])),
        cell(spec("vgg38", 38), plain38),
        cell(spec("vgg38-bn", 38, bn=True), bn38),
        cell(spec("vgg38-bn-res", 38, bn=True, res=True), res),
        cell(spec("vgg38-bn-res-wd1e-3", 38, bn=True, res=True, **WD), wd),
    ]


def _about(kind: str, name: str) -> Callable[[Finding], bool]:
    return lambda f: f.kind == kind and [e.name for e in f.experiments] == [name]


def _fix(problem: str, flag: str) -> Callable[[Finding], bool]:
    return lambda f: f.kind == "fix" and f.evidence.fixes == problem and f.evidence.flag == flag


def _degradation(f: Finding) -> bool:
    return f.kind == "degradation" and f.evidence.deep == "vgg38-bn"


FINDINGS: dict[str, tuple[str, Callable[[Finding], bool]]] = {
    # finding: (the cure that removes it, how to recognise it)
    "vanishing gradients in vgg38": ("vanishing", _about("vanishing_gradients", "vgg38")),
    "vgg38 does not train": ("not_training", _about("not_training", "vgg38")),
    "BatchNorm restores the flow": ("bn_fix", _fix("vanishing_gradients", "batch_norm")),
    "vgg38-bn degrades against vgg08-bn": ("degradation", _degradation),
    "residual connections remove it": ("residual_fix", _fix("degradation", "residual")),
    "vgg38-bn-res overfits": ("overfitting", _about("overfitting", "vgg38-bn-res")),
    "weight decay cures it": ("weight_decay_fix", _fix("overfitting", "weight_decay")),
}


def test_the_constructed_seed_study_shows_every_finding() -> None:
    findings = diagnose(seed_study())
    for name, (_, is_it) in FINDINGS.items():
        assert sum(map(is_it, findings)) == 1, name


# Findings that follow from another one go with it (no problem, nothing to fix).
FOLLOWS = {
    "vanishing gradients in vgg38": {"BatchNorm restores the flow"},
    "vgg38-bn degrades against vgg08-bn": {"residual connections remove it"},
    "vgg38-bn-res overfits": {"weight decay cures it"},
}


@pytest.mark.parametrize("name", list(FINDINGS))
def test_each_finding_is_absent_where_its_problem_is(name: str) -> None:
    cure, is_it = FINDINGS[name]
    findings = diagnose(seed_study(cure))
    assert not any(map(is_it, findings)), name
    kept = {other for other, (_, test) in FINDINGS.items() if any(map(test, findings))}
    assert kept == set(FINDINGS) - {name} - FOLLOWS.get(name, set())


def test_cells_without_a_problem_have_no_finding_of_their_own() -> None:
    findings = diagnose(seed_study())
    problems = {(f.kind, e.name) for f in findings if f.kind != "fix" for e in f.experiments}
    assert not {name for _, name in problems} & {"vgg38-bn-res-wd1e-3"}
    # vgg08-bn is named only as the shallow side of vgg38-bn's degradation
    assert {kind for kind, name in problems if name == "vgg08-bn"} == {"degradation"}
