"""Across-seed aggregation: one seed, several seeds, seeds at different epochs."""

from __future__ import annotations

import math
import statistics

import pytest

from gradlab.science import records
from gradlab.science.aggregate import (
    final_summary,
    gradflow_stats,
    metric_series,
    summarize,
    summarize_test,
)
from gradlab.science.study_results import SeedRun
from tests.study.builders import seed_run


def test_one_seed_has_its_own_values_std_zero_and_n_one() -> None:
    run = seed_run(0, train_loss=[4.0, 3.0], train_acc=[0.1, 0.2])
    series = metric_series([run], "train_acc")
    assert series.epochs == [0, 1]
    assert series.mean == [0.1, 0.2]
    assert series.std == [0.0, 0.0]
    assert series.n == [1, 1]
    assert summarize([0.3]).format() == "0.300 (n=1)"


def test_several_seeds_give_mean_and_sample_std() -> None:
    accs = [[0.1, 0.4], [0.2, 0.5], [0.6, 0.9]]
    runs = [seed_run(s, train_loss=[4.0, 3.0], train_acc=a) for s, a in enumerate(accs)]
    series = metric_series(runs, "train_acc")
    for i in range(2):
        column = [a[i] for a in accs]
        assert series.mean[i] == pytest.approx(statistics.mean(column))
        assert series.std[i] == pytest.approx(statistics.stdev(column))
        assert series.n[i] == 3
    final = final_summary(runs, "train_acc")
    assert final.n == 3 and final.mean == pytest.approx(statistics.mean([0.4, 0.5, 0.9]))


def test_seeds_at_different_epochs_count_only_those_that_reached_each_epoch() -> None:
    done = seed_run(0, train_loss=[4.0, 3.0, 2.0], status="succeeded")
    running = seed_run(1, train_loss=[5.0], status="running")
    series = metric_series([done, running], "train_loss")
    assert series.epochs == [0, 1, 2]
    assert series.n == [2, 1, 1]
    assert series.mean == [4.5, 3.0, 2.0]
    assert series.std[0] == pytest.approx(statistics.stdev([4.0, 5.0]))
    assert series.std[1:] == [0.0, 0.0]
    # Final values: each run's last finished epoch (2.0 and 5.0).
    assert final_summary([done, running], "train_loss").mean == 3.5


def test_test_results_only_from_seeds_that_have_one() -> None:
    a = seed_run(0, train_loss=[1.0], test=records.TestResult(loss=1.0, acc=0.6, best_epoch=0))
    b = seed_run(1, train_loss=[1.0], test=records.TestResult(loss=1.2, acc=0.7, best_epoch=0))
    c = seed_run(2, train_loss=[1.0], status="running")
    summary = summarize_test([a, b, c], "acc")
    assert summary.n == 2
    assert summary.mean == pytest.approx(0.65)
    assert summary.std == pytest.approx(statistics.stdev([0.6, 0.7]))


def test_no_runs_summarise_to_nothing() -> None:
    assert summarize([]).n == 0 and summarize([]).format() == "-"
    assert summarize([math.nan, 1.0]).n == 1


def test_gradflow_across_seeds_per_layer_and_epoch() -> None:
    a = seed_run(0, train_loss=[1, 1], gradients=[[1.0, 2.0], [3.0, 4.0]])
    b = seed_run(1, train_loss=[1], gradients=[[3.0, 6.0]])
    flow = gradflow_stats([a, b], "mean_abs", "last_batch")
    assert flow.layers == ("layer0", "layer1")
    assert flow.epochs == [0, 1] and flow.n == [2, 1]
    assert flow.mean == [[2.0, 4.0], [3.0, 4.0]]
    assert flow.std[0] == pytest.approx([statistics.stdev([1, 3]), statistics.stdev([2, 6])])
    assert gradflow_stats([a], "max_abs").mean[0] == [3.0, 6.0]
    with pytest.raises(ValueError, match="window must be one of"):
        gradflow_stats([a], "mean_abs", "sometimes")


def test_seeds_that_recorded_nothing_yet_do_not_stop_the_gradient_flow() -> None:
    # a study caught mid-way: seed 0 has epochs, seed 1 is queued (no epoch, so no layers)
    done = seed_run(0, train_loss=[1, 1], gradients=[[1.0, 2.0], [3.0, 4.0]])
    queued = SeedRun(seed=1, status="queued", layers=())
    flow = gradflow_stats([queued, done], "mean_abs", "last_batch")
    assert flow.layers == ("layer0", "layer1") and flow.n == [1, 1]
    assert flow.mean == [[1.0, 2.0], [3.0, 4.0]]
    # seeds that did record disagreeing layers are still refused
    other = seed_run(2, train_loss=[1], gradients=[[1.0, 2.0]], layers=["a", "b"])
    with pytest.raises(ValueError, match="seed 2 has different layers"):
        gradflow_stats([done, queued, other])
