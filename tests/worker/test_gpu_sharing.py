"""GRADLAB_GPU_SHARING: fused packs (one child per GPU) or several processes per GPU, each
training one run. No GPU here: the GPUs are ids in CUDA_VISIBLE_DEVICES, which the worker reads
without touching CUDA, and no run is trained (said in each test's name)."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gradlab.settings import WorkerSettings
from gradlab.worker import devices
from gradlab.worker.runner import GPU_PACK_SIZE, pack_size_on
from tests.support.private_services import PrivateRedis
from tests.support.processes import VENV_BIN, ServiceProcess, wait_for

PROCESSES = WorkerSettings(gpu_sharing="processes", processes_per_gpu=3)


def test_processes_sharing_trains_one_run_per_child_and_packs_stay_the_default() -> None:
    packs = WorkerSettings()
    assert packs.gpu_sharing == "packs"
    assert pack_size_on("cuda:0", packs) == GPU_PACK_SIZE
    assert pack_size_on("cuda:0", PROCESSES) == 1
    assert pack_size_on("cpu", PROCESSES) == 1
    # An explicit pack size still wins: processes that each train packs, if asked for.
    assert pack_size_on("cuda", WorkerSettings(gpu_sharing="processes", pack_size=2)) == 2


def test_processes_sharing_starts_that_many_children_per_mocked_gpu() -> None:
    gpus = {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert devices.children_per_gpu(WorkerSettings()) == 1
    assert devices.children_per_gpu(PROCESSES) == 3
    assert devices.worker_concurrency(None, dict(gpus), per_gpu=3) == 6
    assert devices.worker_concurrency(None, {"CUDA_VISIBLE_DEVICES": "-1"}, per_gpu=3) == 1
    assert devices.worker_concurrency(5, dict(gpus), per_gpu=3) == 5  # --concurrency wins


def test_a_bad_sharing_setting_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="gpu_sharing"):
        WorkerSettings.model_validate({"gpu_sharing": "threads"})
    with pytest.raises(ValueError, match="processes_per_gpu"):
        WorkerSettings.model_validate({"processes_per_gpu": 0})


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path)
    try:
        yield redis
    finally:
        redis.stop()


CHILD_LINE = re.compile(r"child (\d+) pid \d+: device cuda:0 \(CUDA_VISIBLE_DEVICES=(\d+)\)")
CONCURRENCY = re.compile(r"concurrency: (\d+) \(prefork\)")


def _children_of_gradlab_worker(broker: PrivateRedis, tmp_path: Path, name: str,
                                **settings: str) -> tuple[int, Counter[str]]:
    """Start a real ``gradlab worker`` that sees two GPU ids, read how many children it
    started and which GPU each pinned, stop it."""
    env = {**os.environ, "GRADLAB_BROKER_URL": broker.url,
           "GRADLAB_DATABASE_URL": f"sqlite:///{tmp_path / 'gradlab.db'}",
           "GRADLAB_CELERY_QUEUE": f"sharing-{name}", "GRADLAB_LOG_FORMAT": "text",
           "CUDA_VISIBLE_DEVICES": "0,1", "PYTHONUNBUFFERED": "1", **settings}
    worker = ServiceProcess(name, [str(VENV_BIN / "gradlab"), "worker"], env, tmp_path)

    def every_child_pinned() -> str | None:
        log = worker.log_tail(100_000)
        started = CONCURRENCY.search(log)
        if "ready." in log and started and len(CHILD_LINE.findall(log)) >= int(started[1]):
            return log
        return None

    try:
        log = wait_for(f"{name}'s children pinned", every_child_pinned, timeout=120,
                       service=worker)
    finally:
        worker.stop()
    found = CONCURRENCY.search(log)
    assert found is not None
    return int(found[1]), Counter(gpu for _, gpu in CHILD_LINE.findall(log))


def test_gradlab_worker_starts_processes_per_mocked_gpu_as_the_setting_says(
    broker: PrivateRedis, tmp_path: Path,
) -> None:
    assert _children_of_gradlab_worker(broker, tmp_path, "packs") == (2, {"0": 1, "1": 1})
    started, pinned = _children_of_gradlab_worker(
        broker, tmp_path, "processes", GRADLAB_GPU_SHARING="processes",
        GRADLAB_PROCESSES_PER_GPU="2")
    assert (started, pinned) == (4, {"0": 2, "1": 2})  # spread round robin
