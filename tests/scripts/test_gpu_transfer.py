"""scripts/gpu_transfer.py: data, wheels and a study's state dealt into per-call folders here,
put back together there, and a study folder brought back in a call's few files. Small files
stand in for CIFAR-100 (the real data's pieces are the same code on 140 MB)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.scripts.script_modules import load_script

transfer = load_script("gpu_transfer")
KIB = 1024


def _data(folder: Path) -> Path:
    """Three files of random bytes (incompressible, like images) and their SHA256SUMS."""
    folder.mkdir()
    lines = []
    for name, size in (("train.npz", 300 * KIB), ("test.npz", 60 * KIB), ("meta.json", 1 * KIB)):
        blob = os.urandom(size)
        (folder / name).write_bytes(blob)
        lines.append(f"{hashlib.sha256(blob).hexdigest()}  {name}\n")
    (folder / "SHA256SUMS").write_text("".join(lines))
    return folder


def _wheels(folder: Path) -> Path:
    folder.mkdir()
    (folder / "pydantic-2.0-py3-none-any.whl").write_bytes(os.urandom(40 * KIB))
    return folder


@pytest.fixture()
def packed(tmp_path: Path) -> tuple[Path, Path]:
    data = _data(tmp_path / "data")
    out = tmp_path / "transfer"
    manifest = transfer.pack(data, _wheels(tmp_path / "wheels"), None, out, call_mib=0.15)
    assert manifest.calls == 3  # 150 KiB calls: wheels and ~360 KiB of xz tar
    return data, out


def _sizes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()
               and p.name != "MANIFEST.json")


def test_pack_deals_wheels_and_data_into_calls_each_within_its_size(
    packed: tuple[Path, Path],
) -> None:
    _, out = packed
    calls = sorted(out.glob("call-*"))
    assert [c.name for c in calls] == ["call-1", "call-2", "call-3"]
    assert all(_sizes(c) <= 0.15 * (1 << 20) for c in calls)
    assert (out / "call-1" / "wheels" / "pydantic-2.0-py3-none-any.whl").is_file()
    manifests = {(c / "MANIFEST.json").read_text() for c in calls}
    assert len(manifests) == 1  # every call says what all of them carry


def test_unpack_waits_for_missing_calls_then_restores_the_data_exactly(
    packed: tuple[Path, Path], tmp_path: Path,
) -> None:
    data, out = packed
    there = tmp_path / "there"
    there.mkdir()
    shutil.copytree(out / "call-1", there / "call-1")
    done, waiting = transfer.unpack(there, tmp_path / "cifar", tmp_path / "study")
    assert (done, waiting) == ([], [2, 3])
    assert not (tmp_path / "cifar").exists()
    assert transfer.main(["unpack", "--transfer", str(there), "--data-out",
                          str(tmp_path / "cifar")]) == transfer.EXIT_INCOMPLETE
    for call in ("call-2", "call-3"):
        shutil.copytree(out / call, there / call)
    done, waiting = transfer.unpack(there, tmp_path / "cifar", tmp_path / "study")
    assert waiting == [] and done == [f"data extracted into {tmp_path / 'cifar'}"]
    for name in ("train.npz", "test.npz", "meta.json", "SHA256SUMS"):
        assert (tmp_path / "cifar" / name).read_bytes() == (data / name).read_bytes()
    # A second call on the same machine finds the data already there.
    assert transfer.unpack(there, tmp_path / "cifar", tmp_path / "study")[0] == [
        f"data already in {tmp_path / 'cifar'}"]


def test_a_damaged_piece_is_named_with_the_call_to_send_again(
    packed: tuple[Path, Path], tmp_path: Path,
) -> None:
    _, out = packed
    piece = next((out / "call-2").glob("data.*"))
    blob = bytearray(piece.read_bytes())
    blob[100] ^= 0xFF
    piece.write_bytes(bytes(blob))
    with pytest.raises(transfer.TransferError, match=r"call-2/data\.\d\d is damaged.*call-2"):
        transfer.unpack(out, tmp_path / "cifar", tmp_path / "study")


def _study(folder: Path) -> Path:
    """A study folder as `gradlab study run` leaves it: a database, a report, figures."""
    (folder / "figures").mkdir(parents=True)
    with sqlite3.connect(folder / "gradlab.db") as db:
        db.execute("CREATE TABLE checkpoints (run TEXT, payload BLOB)")
        db.execute("INSERT INTO checkpoints VALUES ('r1', ?)", (os.urandom(200 * KIB),))
    (folder / "report.json").write_text(json.dumps({"rows": []}))
    (folder / "report.html").write_text("<html></html>")
    (folder / "table.csv").write_text("cell\n")
    (folder / "figures" / "curves.png").write_bytes(b"png")
    return folder


def test_collect_brings_the_report_and_the_state_back_and_pack_sends_the_state_again(
    tmp_path: Path,
) -> None:
    study = _study(tmp_path / "study")
    back = tmp_path / "back"
    record = transfer.collect(study, back)
    names = sorted(p.name for p in back.iterdir())
    assert names == ["collect.json", "report.json", "report.tar", "state.tar.xz.00"]
    assert len(names) <= transfer.RETURN_FILES - 1  # and the call's log beside them
    assert record["sizes"]["gradlab.db"] == (study / "gradlab.db").stat().st_size
    # Next session: the returned files go out again with the data, and come back as the folder
    # (its database), where none is yet.
    out = tmp_path / "transfer"
    manifest = transfer.pack(_data(tmp_path / "data"), None, back, out, call_mib=0.4)
    assert {p.stream for p in manifest.pieces} == {"data", "state"}
    restored = tmp_path / "there" / "full-scale"
    done, waiting = transfer.unpack(out, tmp_path / "there" / "cifar", restored)
    assert waiting == [] and f"state extracted into {restored}" in done
    assert (restored / "gradlab.db").read_bytes() == (study / "gradlab.db").read_bytes()
    assert not (restored / "report.html").exists()  # the report is written again on resume
    # A folder already there is newer (trained on by an earlier call): left alone.
    (restored / "gradlab.db").write_bytes(b"newer")
    done, _ = transfer.unpack(out, tmp_path / "there" / "cifar", restored)
    assert f"state not restored: {restored} exists (newer, from this machine)" in done
    assert (restored / "gradlab.db").read_bytes() == b"newer"


def test_a_returned_state_part_that_differs_is_refused_before_anything_is_packed(
    tmp_path: Path,
) -> None:
    back = tmp_path / "back"
    transfer.collect(_study(tmp_path / "study"), back)
    (back / "state.tar.xz.00").write_bytes(b"truncated")
    with pytest.raises(transfer.TransferError, match=r"state\.tar\.xz\.00 is missing or damaged"):
        transfer.pack(_data(tmp_path / "data"), None, back, tmp_path / "transfer", call_mib=0.4)
