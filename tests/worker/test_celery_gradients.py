"""End to end on real services, the depth study's finding: VGG38's gradients vanish without
BatchNorm and not with it, through the API (uvicorn, HTTP) -> Redis -> a Celery worker process
(prefork, packing) -> PostgreSQL, on a small slice of the real CIFAR-100. (A file of its own so
that, with a test file per pytest-xdist worker, it trains beside test_celery_e2e.py.)"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gradlab.store import runs
from gradlab.store.float_arrays import unpack_floats
from gradlab.store.models import EpochMetricsRow, GradFlowEpochRow
from tests.support.processes import ServiceProcess
from tests.worker.celery_api import post, spec, wait_status

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _first_to_last_ratio(values: list[float]) -> float:
    return values[0] / values[-1]


def test_vgg38_gradients_vanish_without_batchnorm_and_not_with_it(
    celery_worker: ServiceProcess, http: httpx.Client, store: sessionmaker[Session]
) -> None:
    plain = post(http, spec("e2e-vgg38", depth=38, seeds=[0, 1]))
    bn = post(http, spec("e2e-vgg38-bn", depth=38, batch_norm=True, seeds=[0, 1]))
    assert len(plain["runs"]) == 2 and plain["status"] == "queued"

    ratios: dict[str, list[float]] = {}
    for label, created in (("plain", plain), ("bn", bn)):
        done = wait_status(http, created["id"], {"succeeded", "failed", "diverged"}, 400,
                           celery_worker)
        assert done["status"] == "succeeded", done
        # attempt 1: the heartbeat kept the 8 s lease alive through epochs longer than that.
        assert [(r["seed"], r["status"], r["epochs_done"], r["attempt"]) for r in done["runs"]] == [
            (0, "succeeded", 1, 1), (1, "succeeded", 1, 1)]
        # same shape, queued together: the worker trained both seeds as one fused pack
        packs = {r["pack"] for r in done["runs"]}
        assert len(packs) == 1 and None not in packs, done["runs"]

        metrics = http.get(f"/experiments/{created['id']}/metrics").json()
        for run in metrics["runs"]:
            assert run["epochs"] == [0]
            assert 0.0 <= run["val_acc"][0] <= 1.0
            assert run["test"]["acc"] is not None

        flow = http.get(f"/experiments/{created['id']}/gradflow",
                        params={"stat": "mean_abs", "window": "last_batch"}).json()
        layers = flow["layers"]
        assert layers[0] == "entry.conv" and layers[-1] == "head.linear"
        ratios[label] = [_first_to_last_ratio(run["values"][0]) for run in flow["runs"]]

        # One metrics and one gradflow row (a value per layer) per epoch: nothing duplicated.
        with store() as session:
            for run in done["runs"]:
                assert session.scalars(
                    select(EpochMetricsRow.epoch).where(EpochMetricsRow.run_id == run["id"])
                ).all() == [0]
                flow_rows = session.scalars(
                    select(GradFlowEpochRow).where(GradFlowEpochRow.run_id == run["id"])
                ).all()
                assert [row.epoch for row in flow_rows] == [0]
                assert len(unpack_floats(flow_rows[0].last_batch_mean_abs)) == len(layers)
                assert runs.latest_checkpoint(session, run["id"]).epoch == 0

    # Without BN the first layer's gradient is orders of magnitude below the last layer's
    # (the seed study's vanishing gradients); with BN it is not.
    assert all(ratio < 1e-3 for ratio in ratios["plain"]), ratios
    assert all(ratio > 1e-1 for ratio in ratios["bn"]), ratios
