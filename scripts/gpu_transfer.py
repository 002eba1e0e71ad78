"""Moving data, wheels and a study's state to a lent GPU machine and back, in pieces that fit
its calls (docs/gpu.md). Python's standard library only: it runs there before anything is
installed.

    python3 scripts/gpu_transfer.py pack --data DIR [--wheels DIR] [--state DIR] \\
        [--call-mib 56] [--out .gpu-transfer]                         # here, before the calls
    python3 scripts/gpu_transfer.py unpack [--data-out DIR] [--state-out DIR]  # there
    python3 scripts/gpu_transfer.py collect --study DIR --out DIR     # there, after training

``pack`` compresses the data folder into one xz tar (kept in ``OUT/cache`` and reused while the
data's SHA256SUMS is unchanged), splits it and the state's tar (``collect``'s parts) into
pieces, and deals them, with the wheels in the first, into folders ``OUT/call-1``, ``call-2``,
... of at most ``--call-mib`` each: one carried path per ``run`` call. Every folder holds the
whole ``MANIFEST.json`` (each piece's call, size and SHA-256), so the far side names what is
missing or damaged.

``unpack`` checks every piece that arrived, and once all pieces of a stream are there, extracts
it: the data into ``--data-out`` (then checked against its SHA256SUMS by the caller), the state
into ``--state-out`` when that folder does not exist yet (a folder there is newer: a previous
call on the same machine trained on). Exit 0: everything arrived; 3: pieces still missing (the
wheels, when they came, are usable; the message names the calls still to make); 1: damage.

``collect`` puts a study folder into at most 8 files under ``--out`` (what a call brings
back): ``report.json``, ``report.tar`` (the report's HTML, table and figures), the state (the
folder less the report: database, checkpoints) as ``state.tar.xz.NN`` parts under 16 MiB, as
many as fit beside the files already in ``--out`` (the call's log, measurements), and
``collect.json`` with the sizes and the parts' SHA-256.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

MIB = 1 << 20
# Files a study's report writes (science/report/writer.py); the rest of the folder is state.
REPORT_FILES = ("report.json", "report.html", "table.csv", "figures")
# What comes back from a call: 8 files of at most 16 MiB and 64 MiB in all (device README).
RETURN_FILES = 8
STATE_PART_BYTES = 15 * MIB + 900 * 1024  # under the 16 MiB a returned file may have
MAX_STATE_BYTES = 58 * MIB
EXIT_INCOMPLETE = 3


class TransferError(Exception):
    """Something the user must fix, said in one line."""


@dataclass
class Piece:
    stream: str  # "data" or "state"
    name: str
    call: int
    size: int
    sha256: str


@dataclass
class Manifest:
    created: str
    call_bytes: int
    calls: int
    streams: dict[str, dict[str, object]] = field(default_factory=dict)
    pieces: list[Piece] = field(default_factory=list)
    wheels: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        raw = json.loads(path.read_text())
        raw["pieces"] = [Piece(**p) for p in raw["pieces"]]
        return cls(**raw)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


# --- pack (this machine) -----------------------------------------------------------------------


def data_archive(data: Path, cache: Path) -> Path:
    """``cache/cifar.tar.xz`` of the data folder's files (reused while SHA256SUMS is the same:
    compressing 184 MB takes minutes on a small CPU)."""
    sums = data / "SHA256SUMS"
    if not sums.is_file():
        raise TransferError(f"{sums} not found: the data folder must list its files' SHA-256")
    names = sorted(line.split()[-1].lstrip("*") for line in sums.read_text().splitlines()
                   if line.strip())
    archive, stamp = cache / "cifar.tar.xz", cache / "cifar.tar.xz.sums"
    if archive.is_file() and stamp.is_file() and stamp.read_text() == sums.read_text():
        return archive
    cache.mkdir(parents=True, exist_ok=True)
    partial = archive.with_suffix(".partial")
    xz = shutil.which("xz")
    with partial.open("wb") as out:
        if xz:  # the xz tool uses every core; Python's lzma only one
            tar = subprocess.Popen(["tar", "-C", str(data), "-cf", "-", "SHA256SUMS", *names],
                                   stdout=subprocess.PIPE)
            subprocess.run([xz, "-6", "-T0", "-c"], stdin=tar.stdout, stdout=out, check=True)
            if tar.wait() != 0:
                raise TransferError(f"tar of {data} failed")
        else:
            with tarfile.open(fileobj=out, mode="w:xz", preset=6) as bundle:
                for name in ("SHA256SUMS", *names):
                    bundle.add(data / name, arcname=name)
    partial.replace(archive)
    stamp.write_text(sums.read_text())
    return archive


def _split(stream: str, source: Path, capacities: list[int], call_bytes: int,
           ) -> Iterable[tuple[int, str, bytes]]:
    """(call, piece name, bytes): ``source`` cut to fill each call's remaining capacity, with
    new calls appended as needed (``capacities`` is updated in place)."""
    with source.open("rb") as handle:
        index = 0
        while True:
            call = next((i for i, free in enumerate(capacities) if free > 0), None)
            if call is None:
                capacities.append(call_bytes)
                call = len(capacities) - 1
            chunk = handle.read(capacities[call])
            if not chunk:
                return
            capacities[call] -= len(chunk)
            yield call + 1, f"{stream}.{index:02d}", chunk
            index += 1


def _state_stream(state: Path, scratch: Path) -> Path:
    """The state's xz tar, from the parts ``collect`` wrote (checked against collect.json)."""
    record = json.loads((state / "collect.json").read_text())
    joined = scratch / "state.tar.xz"
    with joined.open("wb") as out:
        for part in record["state_parts"]:
            path = state / part["name"]
            if not path.is_file() or sha256_file(path) != part["sha256"]:
                raise TransferError(f"{path} is missing or damaged (collect.json has its "
                                    "SHA-256): copy the call's files again")
            out.write(path.read_bytes())
    return joined


def pack(data: Path, wheels: Path | None, state: Path | None, out: Path,
         call_mib: float) -> Manifest:
    """Deal wheels, data and state into ``out/call-N`` folders of at most ``call_mib`` MiB."""
    call_bytes = int(call_mib * MIB)
    wheel_files = sorted(wheels.glob("*.whl")) if wheels else []
    wheel_bytes = sum(w.stat().st_size for w in wheel_files)
    if wheel_bytes >= call_bytes:
        raise TransferError(f"the wheels ({wheel_bytes / MIB:.1f} MiB) do not fit one call of "
                            f"{call_mib} MiB")
    archive = data_archive(data, out / "cache")
    for old in out.glob("call-*"):
        shutil.rmtree(old)
    scratch = out / "cache"
    manifest = Manifest(created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        call_bytes=call_bytes, calls=0, wheels=[w.name for w in wheel_files])
    manifest.streams["data"] = {"sha256": sha256_file(archive),
                                "sums": (data / "SHA256SUMS").read_text()}
    sources = [("data", archive)]
    if state is not None:
        joined = _state_stream(state, scratch)
        manifest.streams["state"] = {"sha256": sha256_file(joined)}
        sources.append(("state", joined))
    capacities = [call_bytes - wheel_bytes]
    for stream, source in sources:
        for call, name, chunk in _split(stream, source, capacities, call_bytes):
            folder = out / f"call-{call}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(chunk)
            manifest.pieces.append(Piece(stream, name, call, len(chunk),
                                         hashlib.sha256(chunk).hexdigest()))
    manifest.calls = len(capacities)
    if wheel_files:
        (out / "call-1" / "wheels").mkdir(parents=True, exist_ok=True)
        for wheel in wheel_files:
            shutil.copy2(wheel, out / "call-1" / "wheels" / wheel.name)
    text = json.dumps(asdict(manifest), indent=1)
    for call in range(1, manifest.calls + 1):
        (out / f"call-{call}").mkdir(exist_ok=True)
        (out / f"call-{call}" / "MANIFEST.json").write_text(text)
    return manifest


# --- unpack (the GPU machine) ------------------------------------------------------------------


def _manifest_of(transfer: Path) -> Manifest:
    found = sorted(transfer.glob("call-*/MANIFEST.json"))
    if not found:
        raise TransferError(f"nothing has arrived in {transfer}/ (no call-N/MANIFEST.json): "
                            "carry .gpu-transfer/call-1 first")
    manifests = {path.read_text() for path in found}
    if len(manifests) != 1:
        raise TransferError(f"the folders in {transfer}/ come from different `pack` runs: "
                            "remove them and send every call again")
    return Manifest.load(found[0])


def _arrived(transfer: Path, manifest: Manifest, stream: str) -> tuple[list[Path], list[int]]:
    """The stream's pieces in order, and the calls whose pieces are still missing; a damaged
    piece is an error."""
    paths, missing = [], set()
    for piece in (p for p in manifest.pieces if p.stream == stream):
        path = transfer / f"call-{piece.call}" / piece.name
        if not path.is_file():
            missing.add(piece.call)
            continue
        if path.stat().st_size != piece.size or sha256_file(path) != piece.sha256:
            raise TransferError(f"{path} is damaged (size or SHA-256 differs from the "
                                f"manifest): carry .gpu-transfer/call-{piece.call} again")
        paths.append(path)
    return paths, sorted(missing)


def _extract(paths: list[Path], expected_sha256: object, target: Path) -> None:
    blob = b"".join(p.read_bytes() for p in paths)
    if hashlib.sha256(blob).hexdigest() != expected_sha256:
        raise TransferError(f"the pieces joined do not give the packed archive for {target}")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(blob)), mode="r:") as bundle:
        bundle.extractall(partial, filter="data")
    partial.replace(target)


def unpack(transfer: Path, data_out: Path, state_out: Path) -> tuple[list[str], list[int]]:
    """Extract what is complete; returns (what was done, calls still to make)."""
    manifest = _manifest_of(transfer)
    done, waiting = [], set()
    for stream, target in (("data", data_out), ("state", state_out)):
        if stream not in manifest.streams:
            continue
        paths, missing = _arrived(transfer, manifest, stream)
        stamp = target / ".transfer-id"
        if missing:
            waiting.update(missing)
        elif stream == "data" and stamp.is_file() and stamp.read_text() == manifest.created:
            done.append(f"data already in {target}")
        elif stream == "state" and target.exists():
            done.append(f"state not restored: {target} exists (newer, from this machine)")
        else:
            if stream == "data":
                shutil.rmtree(target, ignore_errors=True)
            _extract(paths, manifest.streams[stream]["sha256"], target)
            (target / ".transfer-id").write_text(manifest.created)
            done.append(f"{stream} extracted into {target}")
    return done, sorted(waiting)


# --- collect (the GPU machine) -----------------------------------------------------------------


def _tar(folder: Path, names: Iterable[str], compress: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz" if compress else "w") as bundle:
        for name in sorted(names):
            bundle.add(folder / name, arcname=name)
    return buffer.getvalue()


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def collect(study: Path, out: Path) -> dict[str, object]:
    """The study's report and state as at most ``RETURN_FILES`` files in ``out``."""
    if not study.is_dir():
        raise TransferError(f"no study folder at {study}")
    out.mkdir(parents=True, exist_ok=True)
    mine = ("report.json", "report.tar", "collect.json")
    for old in out.glob("state.tar.xz.*"):
        old.unlink()
    others = [p for p in out.iterdir() if p.name not in mine]  # the log, measurements
    entries = sorted(p.name for p in study.iterdir() if p.name != ".transfer-id")
    report = [n for n in entries if n in REPORT_FILES]
    state = [n for n in entries if n not in REPORT_FILES]
    if (study / "report.json").is_file():
        shutil.copy2(study / "report.json", out / "report.json")
    (out / "report.tar").write_bytes(_tar(study, report, compress=False))
    blob = _tar(study, state, compress=True)
    record: dict[str, object] = {
        "study": str(study),
        "folder_bytes": _size(study),
        "sizes": {name: _size(study / name) for name in entries},
        "state_xz_bytes": len(blob),
        "state_parts": [],
    }
    free_files = RETURN_FILES - len(mine) - len(others)
    if len(blob) > min(MAX_STATE_BYTES, free_files * STATE_PART_BYTES):
        record["state_left_behind"] = (
            f"the state is {len(blob) / MIB:.1f} MiB compressed; {free_files} more file(s) of "
            f"{STATE_PART_BYTES / MIB:.0f} MiB fit in what a call brings back beside "
            f"{len(others)} other(s): train in a call of its own")
    else:
        parts = []
        for index, start in enumerate(range(0, len(blob), STATE_PART_BYTES)):
            chunk = blob[start:start + STATE_PART_BYTES]
            name = f"state.tar.xz.{index:02d}"
            (out / name).write_bytes(chunk)
            parts.append({"name": name, "size": len(chunk),
                          "sha256": hashlib.sha256(chunk).hexdigest()})
        record["state_parts"] = parts
    (out / "collect.json").write_text(json.dumps(record, indent=1))
    return record


# --- command line ------------------------------------------------------------------------------


def _print_calls(manifest: Manifest, out: Path) -> None:
    for call in range(1, manifest.calls + 1):
        size = sum(p.size for p in manifest.pieces if p.call == call)
        if call == 1:
            size += sum((out / "call-1" / "wheels" / w).stat().st_size for w in manifest.wheels)
        print(f"call {call}: carry [\"{out}/call-{call}\"] ({size / MIB:.1f} MiB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("pack")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--wheels", type=Path)
    p.add_argument("--state", type=Path, help="a folder holding collect's files from a call")
    p.add_argument("--call-mib", type=float, default=56.0)
    p.add_argument("--out", type=Path, default=Path(".gpu-transfer"))
    u = verbs.add_parser("unpack")
    u.add_argument("--transfer", type=Path, default=Path(".gpu-transfer"))
    u.add_argument("--data-out", type=Path, default=Path("runs/cifar100"))
    u.add_argument("--state-out", type=Path, default=Path("runs/full-scale"))
    c = verbs.add_parser("collect")
    c.add_argument("--study", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.verb == "pack":
            manifest = pack(args.data, args.wheels, args.state, args.out, args.call_mib)
            _print_calls(manifest, args.out)
        elif args.verb == "unpack":
            done, waiting = unpack(args.transfer, args.data_out, args.state_out)
            for line in done:
                print(line)
            if waiting:
                print("still to carry: " + ", ".join(f"{args.transfer}/call-{c}"
                                                     for c in waiting))
                return EXIT_INCOMPLETE
        else:
            record = collect(args.study, args.out)
            print(json.dumps({k: v for k, v in record.items() if k != "sizes"}, indent=1))
    except (TransferError, OSError, lzma.LZMAError, tarfile.TarError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
