"""What the Celery end-to-end test files share: a small spec on a slice of the real CIFAR-100,
posting it over HTTP and waiting for an experiment's status."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.processes import ServiceProcess, wait_for

SLICE = {"train_limit": 500, "val_limit": 200, "test_limit": 200}


def spec(name: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "depth": 8,
        "batch_norm": False,
        "hyperparameters": {"epochs": 1},
        "data": dict(SLICE),
        "seeds": [0],
    }
    body.update(overrides)
    return body


def post(http: httpx.Client, spec: dict[str, Any]) -> dict[str, Any]:
    response = http.post("/experiments", json=spec)
    assert response.status_code == 201, response.text
    return response.json()


def wait_status(http: httpx.Client, experiment_id: str, statuses: set[str], timeout: float,
                worker: ServiceProcess) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = http.get(f"/experiments/{experiment_id}").json()
        return body if body["status"] in statuses else None

    return wait_for(f"experiment {experiment_id} to reach {statuses}", check, timeout,
                    interval=1.0, service=worker)
