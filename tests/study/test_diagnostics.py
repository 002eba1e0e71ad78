"""Every diagnostic on constructed metric series and gradient profiles, positive and negative."""

from __future__ import annotations

import math

from gradlab.science.diagnostics import (
    DiagnosticSettings,
    Finding,
    diagnose,
    exploding_gradients,
    not_training,
    overfitting,
    vanishing_gradients,
)
from tests.study.builders import HEALTHY, LAYERS, VANISHED, cell, seed_run, spec

SETTINGS = DiagnosticSettings()
FLAT = [4.606, 4.605, 4.605]  # stuck at ln(100)


def kinds(findings: list) -> list[str]:
    return [f.kind for f in findings]


# --- vanishing / exploding ------------------------------------------------------------------


def test_vanishing_gradients_names_the_dead_layers_and_the_ratio() -> None:
    run = seed_run(0, train_loss=FLAT, gradients=[VANISHED] * 3, layers=LAYERS)
    finding = vanishing_gradients(cell(spec("deep", 38), run), SETTINGS)
    assert finding is not None
    assert finding.evidence.layers_below == ["entry.conv", "stage0.conv", "stage2.conv"]
    assert finding.evidence.first_to_last_ratio == 1e-12 / 1e-4
    assert finding.experiments[0].name == "deep" and finding.experiments[0].depth == 38
    assert "entry.conv" in finding.sentence and "1e-08" in finding.sentence


def test_healthy_gradients_do_not_vanish_or_explode() -> None:
    run = seed_run(0, train_loss=[4.0, 3.0, 2.0], gradients=[HEALTHY] * 3, layers=LAYERS)
    healthy = cell(spec("ok"), run)
    assert vanishing_gradients(healthy, SETTINGS) is None
    assert exploding_gradients(healthy, SETTINGS) is None


def test_a_layer_that_recovers_within_the_last_k_epochs_is_not_vanishing() -> None:
    # below the threshold at first, healthy in the latest epoch: not "for k epochs"
    run = seed_run(0, train_loss=FLAT, gradients=[VANISHED, VANISHED, HEALTHY], layers=LAYERS)
    assert vanishing_gradients(cell(spec("late"), run), SETTINGS) is None


def test_a_tiny_first_to_last_ratio_alone_is_vanishing() -> None:
    profile = [1e-7, 1e-5, 1e-4, 1e-2]  # nothing below 1e-8, but 1e5 times smaller at the input
    run = seed_run(0, train_loss=FLAT, gradients=[profile] * 3, layers=LAYERS)
    finding = vanishing_gradients(cell(spec("ratio"), run), SETTINGS)
    assert finding is not None and finding.evidence.layers_below == []
    assert finding.evidence.first_to_last_ratio == 1e-7 / 1e-2


def test_exploding_gradients_positive() -> None:
    profile = [5e2, 50.0, 1.0, 1e-2]
    run = seed_run(0, train_loss=FLAT, gradients=[profile] * 3, layers=LAYERS)
    finding = exploding_gradients(cell(spec("boom"), run), SETTINGS)
    assert finding is not None
    assert finding.evidence.layers_above == ["entry.conv", "stage0.conv"]
    assert finding.evidence.largest_layer == "entry.conv"
    assert finding.evidence.largest_mean_abs == 5e2


# --- not training ---------------------------------------------------------------------------


def test_not_training_when_loss_stays_at_ln_classes_and_accuracy_at_chance() -> None:
    run = seed_run(0, train_loss=FLAT, train_acc=[0.009, 0.010, 0.011])
    finding = not_training(cell(spec("stuck", 38), run), SETTINGS)
    assert finding is not None
    assert math.isclose(float(finding.evidence.ln_classes), math.log(100))
    assert finding.evidence.chance == 0.01
    assert "4.605" in finding.sentence


def test_slow_but_learning_is_not_not_training() -> None:
    # near ln(100) and near chance, but the loss is clearly falling
    run = seed_run(0, train_loss=[4.613, 4.604, 4.580], train_acc=[0.012, 0.015, 0.019])
    assert not_training(cell(spec("slow"), run), SETTINGS) is None


def test_learning_only_the_class_frequencies_of_a_small_slice_is_not_training() -> None:
    # plain VGG38 at medium scale: its head learns the priors of 1,000 images, nothing else
    drop = [4.610, 4.590, 4.576]
    small = spec("small", 38, **{"data.train_limit": 1000})
    finding = not_training(cell(small, seed_run(0, train_loss=drop, train_acc=[0.013] * 3)),
                           SETTINGS)
    assert finding is not None
    assert math.isclose(float(finding.evidence.prior_fit_gain), 99 / 2000)
    # the same curve on all 47,500 images is a (slow) start: learning
    full = spec("full", 38)
    assert not_training(cell(full, seed_run(0, train_loss=drop, train_acc=[0.013] * 3)),
                        SETTINGS) is None
    # and on the small slice a loss falling further than the priors allow is learning
    more = [4.610, 4.56, 4.53]
    assert not_training(cell(small, seed_run(0, train_loss=more, train_acc=[0.013] * 3)),
                        SETTINGS) is None


def test_learning_is_not_not_training() -> None:
    run = seed_run(0, train_loss=[4.2, 3.5, 3.0], train_acc=[0.05, 0.15, 0.25])
    assert not_training(cell(spec("learns"), run), SETTINGS) is None


# --- overfitting ----------------------------------------------------------------------------


def test_overfitting_starts_after_the_validation_minimum() -> None:
    run = seed_run(
        0,
        train_loss=[3.0, 2.5, 2.0, 1.5, 1.0, 0.7],
        val_loss=[3.1, 2.8, 2.6, 2.7, 2.9, 3.2],
    )
    finding = overfitting(cell(spec("fits"), run), SETTINGS)
    assert finding is not None
    assert finding.evidence.best_val_epoch == 2
    assert finding.evidence.start_epoch == 3
    assert finding.evidence.best_val_loss == 2.6 and finding.evidence.last_val_loss == 3.2


def test_falling_validation_loss_is_not_overfitting() -> None:
    run = seed_run(0, train_loss=[3.0, 2.5, 2.0, 1.5], val_loss=[3.1, 2.9, 2.7, 2.6])
    assert overfitting(cell(spec("fine"), run), SETTINGS) is None


def test_validation_loss_rising_with_training_loss_is_not_overfitting() -> None:
    run = seed_run(0, train_loss=[3.0, 2.5, 2.8, 3.2], val_loss=[3.1, 2.6, 2.9, 3.3])
    assert overfitting(cell(spec("diverging"), run), SETTINGS) is None


# --- degradation and fixes ------------------------------------------------------------------


def test_degradation_compares_training_accuracy_of_depth_siblings() -> None:
    shallow = cell(spec("s", 8, bn=True), seed_run(0, train_loss=[3, 2], train_acc=[0.3, 0.5]))
    deep = cell(spec("d", 38, bn=True), seed_run(0, train_loss=[3, 2.5], train_acc=[0.2, 0.35]))
    findings = [f for f in diagnose([shallow, deep]) if f.kind == "degradation"]
    assert len(findings) == 1
    evidence = findings[0].evidence
    assert evidence.shallow == "s" and evidence.deep == "d" and evidence.epoch == 1
    assert math.isclose(float(evidence.gap), 0.15)
    assert [e.name for e in findings[0].experiments] == ["s", "d"]


def test_deeper_net_with_worse_validation_but_better_training_is_not_degradation() -> None:
    # the deeper one overfits (val lower) but trains better: not degradation
    shallow = cell(
        spec("s", 8), seed_run(0, train_loss=[3, 2], train_acc=[0.3, 0.5], val_acc=[0.3, 0.45])
    )
    deep = cell(
        spec("d", 38), seed_run(0, train_loss=[3, 1], train_acc=[0.4, 0.8], val_acc=[0.3, 0.40])
    )
    assert "degradation" not in kinds(diagnose([shallow, deep]))


def test_cells_differing_in_more_than_depth_are_not_siblings() -> None:
    shallow = cell(spec("s", 8), seed_run(0, train_loss=[3, 2], train_acc=[0.3, 0.5]))
    deep = cell(
        spec("d", 38, **{"hyperparameters.learning_rate": 0.01}),
        seed_run(0, train_loss=[3, 2.5], train_acc=[0.2, 0.3]),
    )
    assert "degradation" not in kinds(diagnose([shallow, deep]))


def test_batchnorm_fix_is_credited_with_restoring_gradient_flow() -> None:
    plain = cell(
        spec("vgg38", 38),
        seed_run(0, train_loss=FLAT, train_acc=[0.01] * 3, gradients=[VANISHED] * 3, layers=LAYERS),
    )
    bn = cell(
        spec("vgg38-bn", 38, bn=True),
        seed_run(
            0,
            train_loss=[4.2, 3.6, 3.2],
            train_acc=[0.06, 0.14, 0.22],
            gradients=[HEALTHY] * 3,
            layers=LAYERS,
        ),
    )
    findings = diagnose([plain, bn])
    assert kinds(findings).count("vanishing_gradients") == 1
    assert kinds(findings).count("not_training") == 1
    fixes = [f for f in findings if f.kind == "fix"]
    flow_fix = next(f for f in fixes if f.evidence.fixes == "vanishing_gradients")
    assert flow_fix.evidence.flag == "batch_norm"
    assert flow_fix.evidence.layer == "entry.conv"
    assert flow_fix.evidence.layers_restored_count == 3
    assert flow_fix.sentence.startswith("BatchNorm restored gradient flow to layer entry.conv")
    assert [e.name for e in flow_fix.experiments] == ["vgg38", "vgg38-bn"]
    train_fix = next(f for f in fixes if f.evidence.fixes == "not_training")
    assert math.isclose(float(train_fix.evidence.train_acc_gain), 0.21)


def test_no_fix_when_the_sibling_still_has_the_problem() -> None:
    plain = cell(
        spec("p", 38), seed_run(0, train_loss=FLAT, gradients=[VANISHED] * 3, layers=LAYERS)
    )
    bn = cell(
        spec("b", 38, bn=True),
        seed_run(0, train_loss=FLAT, gradients=[VANISHED] * 3, layers=LAYERS),
    )
    assert "fix" not in kinds(diagnose([plain, bn]))


def test_residual_fix_removes_the_degradation_with_the_gain() -> None:
    shallow = cell(
        spec("vgg08-bn", 8, bn=True), seed_run(0, train_loss=[3, 2], train_acc=[0.3, 0.50])
    )
    deep = cell(
        spec("vgg38-bn", 38, bn=True), seed_run(0, train_loss=[3, 2.5], train_acc=[0.2, 0.40])
    )
    res = cell(
        spec("vgg38-bn-res", 38, bn=True, res=True),
        seed_run(0, train_loss=[3, 1.5], train_acc=[0.35, 0.69]),
    )
    fix = next(f for f in diagnose([shallow, deep, res]) if f.kind == "fix")
    assert fix.evidence.fixes == "degradation" and fix.evidence.flag == "residual"
    assert math.isclose(float(fix.evidence.train_acc_gain), 0.29)
    assert fix.sentence.startswith("residual connections removed the degradation")
    assert "+0.290" in fix.sentence
    assert [e.name for e in fix.experiments] == ["vgg08-bn", "vgg38-bn", "vgg38-bn-res"]


def test_residual_that_stays_below_the_shallow_net_is_no_fix() -> None:
    shallow = cell(spec("s", 8, bn=True), seed_run(0, train_loss=[3, 2], train_acc=[0.3, 0.50]))
    deep = cell(spec("d", 38, bn=True), seed_run(0, train_loss=[3, 2.5], train_acc=[0.2, 0.40]))
    res = cell(
        spec("r", 38, bn=True, res=True), seed_run(0, train_loss=[3, 2.4], train_acc=[0.2, 0.42])
    )
    findings = diagnose([shallow, deep, res])
    assert "fix" not in kinds(findings)
    # the residual net is no depth sibling of the plain-BN shallow one: one degradation only
    assert kinds(findings).count("degradation") == 1


def test_thresholds_are_settings() -> None:
    run = seed_run(0, train_loss=FLAT, gradients=[[1e-6, 1e-6, 1e-6, 1e-3]] * 3, layers=LAYERS)
    subject = cell(spec("x"), run)
    assert vanishing_gradients(subject, SETTINGS) is None  # ratio 1e-3, nothing below 1e-8
    strict = DiagnosticSettings(vanishing_threshold=1e-5)
    finding = vanishing_gradients(subject, strict)
    assert finding is not None and finding.evidence.layers_below_count == 3


def test_a_fix_that_leaves_its_own_degradation_is_not_credited_with_removing_it() -> None:
    # vgg38-bn beats the plain vgg08 but still trains worse than vgg08-bn: BN did not remove
    # the degradation (the seed's "semi-healthy" VGG38).
    plain8 = cell(spec("vgg08", 8), seed_run(0, train_loss=[4.5, 4.4], train_acc=[0.02, 0.025]))
    bn8 = cell(spec("vgg08-bn", 8, bn=True), seed_run(0, train_loss=[4, 3], train_acc=[0.3, 0.5]))
    plain38 = cell(spec("vgg38", 38), seed_run(0, train_loss=FLAT[:2], train_acc=[0.01, 0.011]))
    bn38 = cell(
        spec("vgg38-bn", 38, bn=True), seed_run(0, train_loss=[4, 3.5], train_acc=[0.1, 0.3])
    )
    findings = diagnose([plain8, bn8, plain38, bn38])
    assert kinds(findings).count("degradation") == 2
    assert not any(f.kind == "fix" and f.evidence.fixes == "degradation" for f in findings)


# --- weight decay and overfitting -----------------------------------------------------------

OVERFITS = {"train_loss": [3.0, 2.5, 2.0, 1.5, 1.0], "val_loss": [3.1, 2.8, 2.7, 2.9, 3.2]}


def _res(name: str, weight_decay: float = 0.0, **extra: object) -> object:
    return spec(name, 38, bn=True, res=True,
                **{"hyperparameters.weight_decay": weight_decay, **extra})


def test_weight_decay_is_credited_with_curing_overfitting_with_the_gaps() -> None:
    without = cell(_res("res"), seed_run(0, **OVERFITS))
    with_wd = cell(
        _res("res-wd", 1e-3),
        seed_run(0, train_loss=[3.0, 2.6, 2.3, 2.1, 2.0], val_loss=[3.1, 2.8, 2.6, 2.5, 2.45]),
        seed_run(1, train_loss=[3.0, 2.6, 2.3, 2.1, 2.0], val_loss=[3.1, 2.8, 2.6, 2.5, 2.45]),
    )
    fix = next(f for f in diagnose([without, with_wd]) if f.kind == "fix")
    assert fix.evidence.fixes == "overfitting" and fix.evidence.flag == "weight_decay"
    assert fix.evidence.weight_decay == 1e-3 and fix.evidence.epoch == 4
    assert math.isclose(float(fix.evidence.gap_before), 2.2)
    assert math.isclose(float(fix.evidence.gap_after), 0.45)
    assert math.isclose(float(fix.evidence.gap_reduction), 1 - 0.45 / 2.2)
    assert fix.sentence.startswith("weight decay 0.001 cured the overfitting")
    assert [e.name for e in fix.experiments] == ["res", "res-wd"]


def test_weight_decay_that_leaves_the_overfitting_is_no_fix() -> None:
    without = cell(_res("res"), seed_run(0, **OVERFITS))
    # a smaller gap, but its validation loss still rises after its minimum: not cured
    still = cell(
        _res("res-wd", 1e-3),
        seed_run(0, train_loss=[3.0, 2.7, 2.5, 2.4, 2.3], val_loss=[3.1, 2.8, 2.7, 2.8, 2.9]),
    )
    findings = diagnose([without, still])
    assert kinds(findings).count("overfitting") == 2
    assert "fix" not in kinds(findings)


def test_weight_decay_without_a_smaller_gap_is_no_fix() -> None:
    without = cell(_res("res"), seed_run(0, **OVERFITS))
    # no rise after the minimum, but validation as far behind training as without decay
    same_gap = cell(
        _res("res-wd", 1e-3),
        seed_run(0, train_loss=[3.0, 2.0, 1.5, 1.2, 1.0], val_loss=[3.3, 3.5, 3.3, 3.25, 3.2]),
    )
    assert "fix" not in kinds(diagnose([without, same_gap]))
    looser = DiagnosticSettings(fix_min_gap_reduction=0.0)
    assert "fix" in kinds(diagnose([without, same_gap], looser))


def test_only_weight_decay_is_credited_with_curing_overfitting() -> None:
    # the BatchNorm sibling does not overfit, but BatchNorm is not the seed study's cure
    plain = cell(spec("p", 8), seed_run(0, **OVERFITS))
    bn = cell(spec("b", 8, bn=True), seed_run(0, train_loss=[3, 2.5, 2, 1.8, 1.7],
                                                   val_loss=[3.1, 2.7, 2.3, 2.1, 2.0]))
    # nor is a sibling that also differs by its learning rate
    other_lr = cell(
        _res("res-wd", 1e-3, **{"hyperparameters.learning_rate": 0.01}),
        seed_run(0, train_loss=[3, 2.5, 2, 1.8, 1.7], val_loss=[3.1, 2.7, 2.3, 2.1, 2.0]),
    )
    without = cell(_res("res"), seed_run(0, **OVERFITS))
    assert "fix" not in kinds(diagnose([plain, bn, without, other_lr]))


# --- evidence and sentences -----------------------------------------------------------------


def test_a_first_layer_gradient_of_exactly_zero_reads_ratio_zero_in_the_fix_sentence() -> None:
    # an entry conv whose gradient underflowed to 0: the ratio is 0, as the vanishing finding
    # says, not "nan"
    dead = [0.0, 1e-12, 1e-11, 1e-4]
    plain = cell(spec("p", 38), seed_run(0, train_loss=FLAT, train_acc=[0.01] * 3,
                                         gradients=[dead] * 3, layers=LAYERS))
    bn = cell(spec("b", 38, bn=True), seed_run(0, train_loss=[4.2, 3.6, 3.2],
                                               train_acc=[0.06, 0.14, 0.22],
                                               gradients=[HEALTHY] * 3, layers=LAYERS))
    findings = diagnose([plain, bn])
    vanishing = next(f for f in findings if f.kind == "vanishing_gradients")
    flow_fix = next(f for f in findings if f.kind == "fix")
    assert "(ratio 0)" in vanishing.sentence
    assert "first-to-last ratio 0 -> 1 (epoch 2)" in flow_fix.sentence


def test_findings_round_trip_through_json_with_their_evidence_typed() -> None:
    from tests.study.test_seed_findings import seed_study

    findings = diagnose(seed_study())
    assert {f.kind for f in findings} == {"vanishing_gradients", "not_training", "degradation",
                                         "overfitting", "fix"}
    again = [Finding.model_validate_json(f.model_dump_json()) for f in findings]
    assert [type(f.evidence) for f in again] == [type(f.evidence) for f in findings]
    assert again == findings
    # the sentence's numbers are in the evidence: the threshold a vanishing cell was read at
    vanishing = next(f for f in again if f.kind == "vanishing_gradients")
    assert vanishing.evidence.threshold == SETTINGS.vanishing_threshold
    assert vanishing.evidence.ratio_threshold == SETTINGS.vanishing_ratio
