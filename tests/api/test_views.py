"""GET /experiments/{id}/metrics and /gradflow on rows written straight into Postgres."""

from __future__ import annotations

import csv
import io
import math
import statistics

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from gradlab.science.layers import layer_names as layer_names_for
from gradlab.science.spec import ExperimentSpec
from gradlab.store.float_arrays import pack_floats, unpack_floats
from gradlab.store.models import GradFlowEpochRow, Run
from tests.api.conftest import small_spec
from tests.api.synthetic_rows import epoch_metrics, gradflow_value, insert_experiment, write_epochs

SEEDS = (0, 256)


@pytest.fixture
def spec(unique_name: str) -> ExperimentSpec:
    return ExperimentSpec.model_validate(small_spec(unique_name, seeds=SEEDS))


@pytest.fixture
def layers(spec: ExperimentSpec) -> list[str]:
    return layer_names_for(spec)


def test_metrics_per_run_and_across_seeds(
    client: TestClient,
    postgres_session_factory: sessionmaker[Session],
    spec: ExperimentSpec,
    layers: list[str],
) -> None:
    experiment_id, _ = insert_experiment(
        postgres_session_factory, spec, layers, epochs={0: 10, 256: 7}
    )
    body = client.get(f"/experiments/{experiment_id}/metrics").json()
    first, second = body["runs"]
    assert (first["seed"], second["seed"]) == SEEDS
    assert first["epochs"] == list(range(10)) and second["epochs"] == list(range(7))
    assert first["sampled"] is False and first["raw_count"] == 10
    assert first["val_acc"] == [epoch_metrics(0, e).val_acc for e in range(10)]
    assert first["test"] == {
        "loss": epoch_metrics(0, 9).val_loss,
        "acc": epoch_metrics(0, 9).val_acc,
        "best_epoch": 9,
    }
    across = body["across_seeds"]
    assert across["epochs"] == list(range(10))
    assert across["n"] == [2] * 7 + [1] * 3
    both = [epoch_metrics(s, 3).train_loss for s in SEEDS]
    assert across["mean"]["train_loss"][3] == pytest.approx(statistics.fmean(both))
    assert across["std"]["train_loss"][3] == pytest.approx(statistics.stdev(both))
    assert across["std"]["train_loss"][9] == 0.0  # one seed: no spread (reports' convention)


def test_max_points_keeps_first_and_last_and_says_it_sampled(
    client: TestClient,
    postgres_session_factory: sessionmaker[Session],
    spec: ExperimentSpec,
    layers: list[str],
) -> None:
    experiment_id, _ = insert_experiment(
        postgres_session_factory, spec, layers, epochs={0: 50, 256: 3}
    )
    body = client.get(f"/experiments/{experiment_id}/metrics", params={"max_points": 5}).json()
    long, short = body["runs"]
    assert long["sampled"] is True and long["raw_count"] == 50
    assert len(long["epochs"]) == 5
    assert long["epochs"][0] == 0 and long["epochs"][-1] == 49
    assert long["epochs"] == sorted(set(long["epochs"]))
    assert long["train_loss"] == [epoch_metrics(0, e).train_loss for e in long["epochs"]]
    assert short["sampled"] is False and short["epochs"] == [0, 1, 2]
    across = body["across_seeds"]
    assert across["sampled"] is True and across["raw_count"] == 50
    assert len(across["epochs"]) == 5 and across["epochs"][-1] == 49
    assert len(across["mean"]["val_loss"]) == 5

    response = client.get(f"/experiments/{experiment_id}/metrics", params={"max_points": 1})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "max_points"


def test_summary_is_mean_and_std_of_final_metrics_across_succeeded_seeds(
    client: TestClient,
    postgres_session_factory: sessionmaker[Session],
    spec: ExperimentSpec,
    layers: list[str],
) -> None:
    experiment_id, _ = insert_experiment(postgres_session_factory, spec, layers, epochs=4)
    summary = client.get(f"/experiments/{experiment_id}").json()["summary"]
    assert summary["finished_seeds"] == 2
    finals = [epoch_metrics(s, 3).val_acc for s in SEEDS]
    final_val_acc = summary["metrics"]["final_val_acc"]
    assert final_val_acc["n"] == 2
    assert final_val_acc["mean"] == pytest.approx(statistics.fmean(finals))
    assert final_val_acc["std"] == pytest.approx(statistics.stdev(finals))
    assert summary["metrics"]["test_acc"]["mean"] == pytest.approx(statistics.fmean(finals))


def test_gradflow_json_has_the_documented_shape_and_the_stored_numbers(
    client: TestClient,
    postgres_session_factory: sessionmaker[Session],
    spec: ExperimentSpec,
    layers: list[str],
) -> None:
    experiment_id, _ = insert_experiment(postgres_session_factory, spec, layers, epochs=3)
    body = client.get(f"/experiments/{experiment_id}/gradflow").json()
    assert set(body) == {"experiment_id", "stat", "window", "layers", "runs", "across_seeds"}
    assert (body["experiment_id"], body["stat"], body["window"]) == (
        experiment_id,
        "mean_abs",
        "last_batch",
    )
    assert body["layers"] == layers
    L = len(layers)
    for run in body["runs"]:
        assert set(run) == {"seed", "status", "epochs", "values"}
        assert run["status"] == "succeeded" and run["epochs"] == [0, 1, 2]
        assert run["values"] == [
            [gradflow_value(run["seed"], e, j, L, "mean_abs", "last_batch") for j in range(L)]
            for e in range(3)
        ]
    across = body["across_seeds"]
    assert set(across) == {"epochs", "n", "mean", "std"}
    assert across["epochs"] == [0, 1, 2] and across["n"] == [2, 2, 2]
    pair = [gradflow_value(s, 1, 4, L, "mean_abs", "last_batch") for s in SEEDS]
    assert across["mean"][1][4] == pytest.approx(statistics.fmean(pair))
    assert across["std"][1][4] == pytest.approx(statistics.stdev(pair))
    # vanishing towards the input, as written
    assert body["runs"][0]["values"][0][0] < body["runs"][0]["values"][0][-1] / 100


def test_gradflow_query_selects_stat_window_seed_and_epochs(
    client: TestClient,
    postgres_session_factory: sessionmaker[Session],
    spec: ExperimentSpec,
    layers: list[str],
) -> None:
    experiment_id, _ = insert_experiment(postgres_session_factory, spec, layers, epochs=6)
    params = {"stat": "l2", "window": "epoch_mean", "seed": 256, "epoch_from": 2, "epoch_to": 4}
    body = client.get(f"/experiments/{experiment_id}/gradflow", params=params).json()
    (run,) = body["runs"]
    assert run["seed"] == 256 and run["epochs"] == [2, 3, 4]
    assert run["values"][0][0] == gradflow_value(256, 2, 0, len(layers), "l2", "epoch_mean")
    assert body["across_seeds"]["n"] == [1, 1, 1]

    bad = client.get(f"/experiments/{experiment_id}/gradflow", params={"seed": 7})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "seed"
    bad = client.get(
        f"/experiments/{experiment_id}/gradflow", params={"epoch_from": 5, "epoch_to": 1}
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "epoch_from"
    bad = client.get(f"/experiments/{experiment_id}/gradflow", params={"stat": "median"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "stat"


def test_gradflow_csv_is_a_tidy_table_of_the_json_numbers(
    client: TestClient,
    postgres_session_factory: sessionmaker[Session],
    spec: ExperimentSpec,
    layers: list[str],
) -> None:
    experiment_id, _ = insert_experiment(postgres_session_factory, spec, layers, epochs=2)
    url = f"/experiments/{experiment_id}/gradflow"
    as_json = client.get(url, params={"stat": "max_abs"}).json()
    response = client.get(url, params={"stat": "max_abs", "format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0]) == [
        "experiment_id",
        "seed",
        "epoch",
        "layer_index",
        "layer",
        "stat",
        "window",
        "value",
    ]
    assert len(rows) == len(SEEDS) * 2 * len(layers)
    for row in rows:
        run = next(r for r in as_json["runs"] if r["seed"] == int(row["seed"]))
        i = run["epochs"].index(int(row["epoch"]))
        j = int(row["layer_index"])
        assert row["layer"] == layers[j]
        assert float(row["value"]) == run["values"][i][j]
        assert (row["experiment_id"], row["stat"], row["window"]) == (
            experiment_id,
            "max_abs",
            "last_batch",
        )


def test_gradflow_png_is_the_figure(
    client: TestClient,
    postgres_session_factory: sessionmaker[Session],
    spec: ExperimentSpec,
    layers: list[str],
) -> None:
    experiment_id, _ = insert_experiment(postgres_session_factory, spec, layers, epochs=2)
    for params in ({"format": "png"}, {"format": "png", "seed": 0, "log_scale": True}):
        response = client.get(f"/experiments/{experiment_id}/gradflow", params=params)
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
        assert len(response.content) > 5_000


def test_gradflow_of_a_running_experiment_shows_new_epochs_and_nan_as_null(
    client: TestClient,
    postgres_session_factory: sessionmaker[Session],
    spec: ExperimentSpec,
    layers: list[str],
) -> None:
    experiment_id, run_ids = insert_experiment(
        postgres_session_factory, spec, layers, epochs=1, status="running"
    )
    url = f"/experiments/{experiment_id}/gradflow"
    assert client.get(url).json()["runs"][0]["epochs"] == [0]
    with postgres_session_factory() as session:
        write_epochs(session, run_ids[0], 0, [1], len(layers))
        row = session.get(GradFlowEpochRow, (run_ids[0], 1))
        values = unpack_floats(row.last_batch_mean_abs)
        values[2] = math.nan
        row.last_batch_mean_abs = pack_floats(values)
        session.flush()
        # the worker records an epoch's rows and the run's progress in one transaction
        session.execute(update(Run).where(Run.id == run_ids[0]).values(epochs_done=2))
        session.commit()
    body = client.get(url).json()
    assert body["runs"][0]["epochs"] == [0, 1]
    assert body["runs"][0]["values"][1][2] is None
    assert body["across_seeds"]["n"] == [2, 1]


def test_a_finished_experiments_views_are_served_from_the_cache(
    client: TestClient,
    postgres_session_factory: sessionmaker[Session],
    spec: ExperimentSpec,
    layers: list[str],
) -> None:
    experiment_id, run_ids = insert_experiment(postgres_session_factory, spec, layers, epochs=2)
    url = f"/experiments/{experiment_id}/gradflow"
    first = client.get(url).content
    # finished runs never change; a row edited behind the API's back shows it is not re-read
    with postgres_session_factory() as session:
        session.execute(
            update(GradFlowEpochRow)
            .where(GradFlowEpochRow.run_id == run_ids[0])
            .values(last_batch_mean_abs=pack_floats([123.0] * len(layers)))
        )
        session.execute(update(Run).where(Run.id == run_ids[0]).values(epochs_done=2))
        session.commit()
    assert client.get(url).content == first
    assert client.get(url, params={"window": "epoch_mean"}).content != first


def test_views_of_an_unknown_experiment_are_404(client: TestClient) -> None:
    for view in ("metrics", "gradflow"):
        response = client.get(f"/experiments/missing/{view}")
        assert response.status_code == 404
        assert response.json()["type"] == "not_found"


def test_a_running_experiments_view_is_reused_until_a_run_progresses(
    client: TestClient,
    postgres_session_factory: sessionmaker[Session],
    spec: ExperimentSpec,
    layers: list[str],
) -> None:
    experiment_id, run_ids = insert_experiment(
        postgres_session_factory, spec, layers, epochs=1, status="running"
    )
    url = f"/experiments/{experiment_id}/gradflow"
    first = client.get(url).json()

    def edit_epoch_0(value: float, progress: bool) -> None:
        with postgres_session_factory() as session:
            session.execute(
                update(GradFlowEpochRow)
                .where(GradFlowEpochRow.run_id == run_ids[0], GradFlowEpochRow.epoch == 0)
                .values(last_batch_mean_abs=pack_floats([value] * len(layers)))
            )
            if progress:
                session.execute(update(Run).where(Run.id == run_ids[0]).values(epochs_done=2))
            session.commit()

    edit_epoch_0(7.0, progress=False)  # no run changed: the rendered view is reused
    assert client.get(url).json() == first
    edit_epoch_0(9.0, progress=True)  # a run moved on: rendered again from the database
    assert client.get(url).json()["runs"][0]["values"][0] == [9.0] * len(layers)
