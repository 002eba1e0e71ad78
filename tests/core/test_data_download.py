"""The CIFAR download on a fresh machine: `gradlab study run` (make demo) and `gradlab train`
fetch the archive when the data folder has none, check it, resume it, and fail clearly offline.

Every archive comes from a real HTTP server on 127.0.0.1 (tests/support/archive_server.py)
through GRADLAB_CIFAR_URL, never from the internet. The archives are made here in the official
layout; their MD5 cannot be the official one, so the tests replace the MD5 torchvision declares
by the test archive's (``official_md5_replaced``): the check itself runs unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from gradlab.cli import core_commands, study_commands
from gradlab.core import data_download
from gradlab.core.data import DataNotFoundError, ensure_data, load_cifar
from gradlab.core.data_download import DownloadError, archive_for, official_archive
from gradlab.settings import get_worker_settings
from tests.core.cifar_files import (
    random_cifar,
    tar_gz_of,
    write_official_cifar100,
    write_seed_sized_cifar100,
)
from tests.support.archive_server import ArchiveServer
from tests.support.processes import VENV_BIN, free_port

NAME = "cifar-100-python.tar.gz"
runner = CliRunner()


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, np.ndarray]:
    """A few images in the official layout (train, test, meta) as .tar.gz, and the train
    images it holds."""
    rng = np.random.default_rng(7)
    train, test = random_cifar(rng, 40, 100), random_cifar(rng, 8, 100)
    folder = write_official_cifar100(tmp_path_factory.mktemp("small"), train, test)
    return tar_gz_of(folder), train[0]


@pytest.fixture(scope="module")
def trainable_archive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The official layout with the 50,000 training images the seed split needs."""
    return tar_gz_of(write_seed_sized_cifar100(tmp_path_factory.mktemp("seed-sized")))


def official_md5_replaced(monkeypatch: pytest.MonkeyPatch, blob: bytes) -> None:
    """The MD5 torchvision declares for cifar-100-python.tar.gz, replaced by ``blob``'s."""
    official = official_archive("cifar100")
    fake = replace(official, md5=hashlib.md5(blob).hexdigest())
    monkeypatch.setattr(data_download, "official_archive", lambda dataset: fake)


@pytest.fixture
def mirror_setting(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """GRADLAB_CIFAR_URL set by the test (through the returned monkeypatch), read afresh."""
    monkeypatch.delenv("GRADLAB_CIFAR_URL", raising=False)
    get_worker_settings.cache_clear()
    yield monkeypatch
    get_worker_settings.cache_clear()


def _serve(monkeypatch: pytest.MonkeyPatch, server: ArchiveServer) -> None:
    monkeypatch.setenv("GRADLAB_CIFAR_URL", server.url)
    get_worker_settings.cache_clear()


def test_the_official_archive_is_torchvisions_and_a_mirror_changes_only_its_url(
        mirror_setting: pytest.MonkeyPatch) -> None:
    official = archive_for("cifar100")
    assert official.url == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    assert official.md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert official.folder == "cifar-100-python"
    mirror_setting.setenv("GRADLAB_CIFAR_URL", "http://mirror.example/cifar/")
    get_worker_settings.cache_clear()
    mirrored = archive_for("cifar100")
    assert mirrored.url == "http://mirror.example/cifar/cifar-100-python.tar.gz"
    assert mirrored.md5 == official.md5  # a mirror must serve the official archive


def test_a_fresh_folder_gets_the_archive_checked_and_extracted(
        tmp_path: Path, mirror_setting: pytest.MonkeyPatch,
        small_archive: tuple[bytes, np.ndarray]) -> None:
    blob, train_images = small_archive
    official_md5_replaced(mirror_setting, blob)
    fresh = tmp_path / "no-such-folder-yet"
    with ArchiveServer({NAME: blob}) as server:
        _serve(mirror_setting, server)
        assert ensure_data(fresh, "cifar100", download=True) == fresh
    assert [(s.range, s.status, s.sent) for s in server.served] == [(None, 200, len(blob))]
    assert sorted(p.name for p in (fresh / "cifar-100-python").iterdir()) == [
        "meta", "test", "train"]
    assert sorted(p.name for p in fresh.iterdir()) == ["cifar-100-python"]  # no part, no staging
    assert np.array_equal(load_cifar(fresh).train_images, train_images)
    # found now: nothing is fetched again
    with ArchiveServer({NAME: blob}) as again:
        _serve(mirror_setting, again)
        assert ensure_data(fresh, "cifar100", download=True) == fresh
    assert again.served == []


@pytest.mark.parametrize("served", ["a flipped byte", "another archive"])
def test_an_archive_that_is_not_the_published_one_is_refused_and_deleted(
        tmp_path: Path, mirror_setting: pytest.MonkeyPatch,
        small_archive: tuple[bytes, np.ndarray], served: str) -> None:
    blob, _ = small_archive
    official_md5_replaced(mirror_setting, blob)
    if served == "a flipped byte":
        wrong = blob[:100] + bytes([blob[100] ^ 0xFF]) + blob[101:]
    else:
        rng = np.random.default_rng(8)
        other = write_official_cifar100(tmp_path / "other", random_cifar(rng, 4, 100),
                                        random_cifar(rng, 2, 100))
        wrong = tar_gz_of(other)
    data = tmp_path / "data"
    with ArchiveServer({NAME: wrong}) as server:
        _serve(mirror_setting, server)
        with pytest.raises(DownloadError) as info:
            ensure_data(data, "cifar100", download=True)
    message = str(info.value)
    assert f"MD5 {hashlib.md5(wrong).hexdigest()} differs from the published" in message
    assert "deleted" in message and f"{server.url}/{NAME}" in message
    assert list(data.iterdir()) == []  # no archive left to look finished, nothing extracted
    with pytest.raises(DataNotFoundError):
        ensure_data(data, "cifar100", download=False)


def test_a_download_that_breaks_off_continues_from_where_it_stopped(
        tmp_path: Path, mirror_setting: pytest.MonkeyPatch,
        small_archive: tuple[bytes, np.ndarray]) -> None:
    blob, train_images = small_archive
    official_md5_replaced(mirror_setting, blob)
    half = len(blob) // 2
    with ArchiveServer({NAME: blob}) as server:
        server.break_after = half
        _serve(mirror_setting, server)
        ensure_data(tmp_path, "cifar100", download=True)
    assert [(s.range, s.status, s.sent) for s in server.served] == [
        (None, 200, half), (f"bytes={half}-", 206, len(blob) - half)]
    assert np.array_equal(load_cifar(tmp_path).train_images, train_images)


@pytest.mark.parametrize("server_ranges", [True, False], ids=["continued", "started over"])
def test_a_partial_download_left_by_an_earlier_run_is_continued_or_cleanly_restarted(
        tmp_path: Path, mirror_setting: pytest.MonkeyPatch,
        small_archive: tuple[bytes, np.ndarray], server_ranges: bool) -> None:
    blob, train_images = small_archive
    official_md5_replaced(mirror_setting, blob)
    # what a killed command left; a server without ranges makes it useless (and harmless)
    left = blob[: len(blob) // 3] if server_ranges else b"stale bytes of another download"
    (tmp_path / f"{NAME}.part").write_bytes(left)
    with pytest.raises(DataNotFoundError):  # a partial archive is never taken for data
        ensure_data(tmp_path, "cifar100", download=False)
    with ArchiveServer({NAME: blob}, ranges=server_ranges) as server:
        _serve(mirror_setting, server)
        ensure_data(tmp_path, "cifar100", download=True)
    sent = len(blob) - len(left) if server_ranges else len(blob)
    assert [(s.range, s.status, s.sent) for s in server.served] == [
        (f"bytes={len(left)}-", 206 if server_ranges else 200, sent)]
    assert np.array_equal(load_cifar(tmp_path).train_images, train_images)


# --- the commands -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    app.add_typer(core_commands.commands)
    app.add_typer(study_commands.commands)
    return app


def test_gradlab_train_on_a_fresh_machine_downloads_then_trains(
        app: typer.Typer, tmp_path: Path, mirror_setting: pytest.MonkeyPatch,
        trainable_archive: bytes) -> None:
    official_md5_replaced(mirror_setting, trainable_archive)
    data, out = tmp_path / "data", tmp_path / "out"
    with ArchiveServer({NAME: trainable_archive}) as server:
        _serve(mirror_setting, server)
        result = runner.invoke(app, [
            "train", "--depth", "8", "--width", "8", "--epochs", "1", "--batch-size", "50",
            "--train-limit", "100", "--val-limit", "50", "--test-limit", "50",
            "--data-dir", str(data), "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [s.status for s in server.served] == [200]
    assert (data / "cifar-100-python" / "train").is_file()
    record = json.loads((out / "result.json").read_text())
    assert record["status"] == "succeeded" and len(record["epochs"]) == 1


def _closed_port_url() -> str:
    """A folder URL on 127.0.0.1 where nothing listens: the connection is refused."""
    return f"http://127.0.0.1:{free_port()}/cifar"


def test_gradlab_train_offline_says_what_to_do_and_exits_2(
        app: typer.Typer, tmp_path: Path, mirror_setting: pytest.MonkeyPatch) -> None:
    url = _closed_port_url()
    mirror_setting.setenv("GRADLAB_CIFAR_URL", url)
    get_worker_settings.cache_clear()
    result = runner.invoke(app, ["train", "--depth", "8", "--epochs", "1", "--data-dir",
                                 str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"could not download {url}/{NAME}" in result.output
    assert "--data-dir" in result.output and "GRADLAB_DATA_DIR" in result.output
    assert str(tmp_path / "data" / "train.npz") in result.output  # where it looked first
    assert "Traceback" not in result.output
    assert list((tmp_path / "data").iterdir()) == []  # nothing half-written
    assert not (tmp_path / "out" / "result.json").exists()


# ``gradlab study run`` as `make demo` runs it, in its own process: the prelude replaces the MD5
# torchvision declares by the test archive's before the command starts.
_STUDY_RUN = (
    "import sys, dataclasses, typer\n"
    "from gradlab.core import data_download\n"
    "official = data_download.official_archive('cifar100')\n"
    "fake = dataclasses.replace(official, md5=sys.argv.pop(1))\n"
    "data_download.official_archive = lambda dataset: fake\n"
    "from gradlab.cli.study_commands import run_command\n"
    "typer.run(run_command)\n"
)
STUDY = {
    "name": "download-study",
    "base": {"name": "dl", "depth": 8, "width": 8, "hyperparameters": {"epochs": 1,
             "batch_size": 50}, "data": {"train_limit": 100, "val_limit": 50, "test_limit": 50}},
    "seeds": [0],
}


def _study_run(tmp_path: Path, md5: str, mirror: str) -> subprocess.CompletedProcess[str]:
    study_file = tmp_path / "study.json"
    study_file.write_text(json.dumps(STUDY))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADLAB_")}
    env.update(GRADLAB_DATA_DIR=str(tmp_path / "data"), GRADLAB_CIFAR_URL=mirror,
               GRADLAB_DEVICE="cpu")
    return subprocess.run(
        [str(VENV_BIN / "python"), "-c", _STUDY_RUN, md5, str(study_file), "--out",
         str(tmp_path / "out"), "--device", "cpu"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)


def test_study_run_on_a_fresh_machine_downloads_then_trains_and_reports(
        tmp_path: Path, trainable_archive: bytes) -> None:
    with ArchiveServer({NAME: trainable_archive}) as server:
        done = _study_run(tmp_path, hashlib.md5(trainable_archive).hexdigest(), server.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [s.status for s in server.served] == [200]
    assert (tmp_path / "data" / "cifar-100-python" / "train").is_file()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [c["status"] for c in report["completion"]] == ["succeeded"]


def test_study_run_offline_exits_2_naming_the_url(tmp_path: Path) -> None:
    url = _closed_port_url()
    done = _study_run(tmp_path, "0" * 32, url)
    assert done.returncode == 2, done.stdout + done.stderr
    output = " ".join((done.stdout + done.stderr).split())  # rich wraps long lines
    assert f"could not download {url}/{NAME}" in output and "GRADLAB_DATA_DIR" in output
    assert "Traceback" not in output
    assert not (tmp_path / "data" / "cifar-100-python").exists()


def test_gradlab_data_download_fetches_the_archive_alone(
        app: typer.Typer, tmp_path: Path, mirror_setting: pytest.MonkeyPatch,
        small_archive: tuple[bytes, np.ndarray]) -> None:
    blob, train_images = small_archive
    official_md5_replaced(mirror_setting, blob)
    with ArchiveServer({NAME: blob}) as server:
        _serve(mirror_setting, server)
        result = runner.invoke(app, ["data", "download", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"downloading {server.url}/{NAME}" in result.output
    assert f"cifar100 ready at {tmp_path / 'cifar-100-python'}" in result.output
    assert np.array_equal(load_cifar(tmp_path).train_images, train_images)


def test_a_data_folder_that_cannot_be_created_is_a_clear_error(
        tmp_path: Path, mirror_setting: pytest.MonkeyPatch) -> None:
    mirror_setting.setenv("GRADLAB_CIFAR_URL", _closed_port_url())
    get_worker_settings.cache_clear()
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(DownloadError, match="no cifar100 data in .* and fetching it failed"):
        ensure_data(tmp_path / "a-file" / "data", "cifar100", download=True)
