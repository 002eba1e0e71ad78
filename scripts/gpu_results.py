"""Put what the GPU calls brought back into docs/results/full-scale/ (docs/gpu.md, last step).

    python scripts/gpu_results.py runs/gpu/1 runs/gpu/2 ... --out docs/results/full-scale

Each argument is a folder holding one call's returned files, in the order the calls ran. From
the last one that trained: ``report.json`` and the report's figures (``report.tar``); from the
last measurement: the throughput table (``sharing.md``); from every call's ``gpu-check.log``:
the GPU's name, the modes it ran and its wall time. ``README.md`` gets all of it, with the
final cell's and every finished cell's test accuracy (mean +- std over seeds) as the report
has them. Nothing is written that no call printed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FINAL_CELL = "vgg38-bn-res-wd1e-3"
GPU_LINE = re.compile(r"^== (.+); torch (\S+)$", re.M)
MODE_LINE = re.compile(r"^== ([a-z-]+): \d+ s of \d+ left$", re.M)
DONE_LINE = re.compile(r"^== done on (.+): wall (\d+) s of (\d+)$", re.M)


@dataclass(frozen=True)
class Call:
    folder: Path
    gpu: str
    torch: str
    modes: list[str]
    wall_seconds: int | None
    budget_seconds: int | None


def read_call(folder: Path) -> Call:
    log = (folder / "gpu-check.log").read_text(errors="replace")
    gpu = GPU_LINE.search(log)
    done = DONE_LINE.search(log)
    return Call(folder, gpu[1] if gpu else "unknown", gpu[2] if gpu else "unknown",
                MODE_LINE.findall(log), int(done[2]) if done else None,
                int(done[3]) if done else None)


def _accuracy(row: dict[str, Any]) -> str:
    acc = row["test_acc"]
    return f"{acc['mean']:.4f} +- {acc['std']:.4f} (n={acc['n']})"


def cell_lines(report: dict[str, Any]) -> list[str]:
    """The final cell first, then every other cell with a finished seed."""
    rows = sorted(report["table"], key=lambda r: r["name"] != FINAL_CELL)
    lines = []
    for row in rows:
        done = ", ".join(f"seed {s}: {e}" for s, e in row["epochs_done"].items())
        if row["test_acc"]["n"]:
            lines.append(f"| {row['name']} | {_accuracy(row)} | {row['epochs_planned']} | "
                         f"{done} |")
        elif row["name"] == FINAL_CELL:
            lines.append(f"| {row['name']} | not finished | {row['epochs_planned']} | {done} |")
    return lines


def readme(calls: list[Call], report: dict[str, Any] | None, sharing: str | None) -> str:
    gpus = sorted({c.gpu for c in calls})
    out = ["# The seed study at full scale on a GPU", "",
           f"GPU: {', '.join(gpus)}. Commands: docs/gpu.md; each call ran "
           "`bash scripts/gpu_check.sh MODE...`.", "",
           "| call | modes | wall s | budget s | torch |", "| --- | --- | ---: | ---: | --- |"]
    for call in calls:
        out.append(f"| {call.folder.name} | {' '.join(call.modes)} | "
                   f"{call.wall_seconds if call.wall_seconds is not None else 'cut off'} | "
                   f"{call.budget_seconds or '-'} | {call.torch} |")
    if report is not None:
        out += ["", f"Report: `report.json` ({report['runs_finished']} of "
                    f"{report['runs_planned']} runs finished), figures in `figures/`.", "",
                "| cell | test accuracy | epochs planned | epochs done |",
                "| --- | --- | ---: | --- |", *cell_lines(report)]
    if sharing is not None:
        out += ["", "## Throughput: fused packs or processes per GPU", "", sharing.strip()]
    return "\n".join(out) + "\n"


def write_results(folders: list[Path], out: Path) -> Path:
    calls = [read_call(f) for f in folders]
    trained = [f for f in folders if (f / "report.tar").is_file()]
    measured = [f for f in folders if (f / "sharing.md").is_file()]
    out.mkdir(parents=True, exist_ok=True)
    report = None
    if trained:
        with tarfile.open(trained[-1] / "report.tar") as bundle:
            members = [m for m in bundle.getmembers()
                       if m.name == "report.json" or m.name.startswith("figures/")]
            bundle.extractall(out, members=members, filter="data")
        report = json.loads((out / "report.json").read_text())
    sharing = (measured[-1] / "sharing.md").read_text() if measured else None
    path = out / "README.md"
    path.write_text(readme(calls, report, sharing))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("docs/results/full-scale"))
    args = parser.parse_args(argv)
    missing = [f for f in args.folders if not (f / "gpu-check.log").is_file()]
    if missing:
        print(f"error: no gpu-check.log in {', '.join(map(str, missing))}", file=sys.stderr)
        return 1
    print(f"wrote {write_results(args.folders, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
