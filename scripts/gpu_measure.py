"""Fused packs or processes per GPU? Measure both within a time budget and say which won.

    python scripts/gpu_measure.py --models vgg38 --budget 480 --results runs/gpu-measure

For each model, in this order (what decides the worker's default first), each measurement a
``gradlab bench`` process of its own with a timeout from what is left of ``--budget``:

1. one run alone and fused packs of every size without CUDA graphs (``--pack 1,2,4,8
   --no-cuda-graphs``: the alone rate is that command's single-step rate, the baseline of
   every ratio);
2. fused packs with CUDA graphs, one size per process (compiling dominates; 4, the default
   pack size, first);
3. the same numbers of runs as separate processes sharing the GPU (``--processes N``), with
   CUDA graphs, then without.

A measurement already in ``--results`` is not made again, so a second call resumes where the
budget stopped the first (``sharing.json`` there brings back everything earlier calls measured:
carry it to resume on a fresh machine). At the end, ``sharing.json`` (every figure and the
decision) and ``sharing.md`` (the table) are written, and the winner printed with the setting
to use: processes only where they beat the best pack (both with CUDA graphs, as the worker
trains) on VGG38, 9 of the seed study's 11 runs and 97% of its FLOPs, by more than
``MARGIN``; else packs stay the default.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Processes must beat packs by more than this to change the default (run-to-run noise of a
# shared GPU's rates is a few %).
MARGIN = 0.05
# Seconds below which a measurement is not started (a process needs that to start at all).
MIN_SECONDS = 20.0
DECIDING_MODEL = "vgg38"


@dataclass(frozen=True)
class Measurement:
    model: str
    kind: str  # "packs" or "processes"
    graphs: bool
    sizes: tuple[int, ...]

    @property
    def key(self) -> str:
        sizes = "-".join(map(str, self.sizes))
        return f"{self.model}-{self.kind}-graphs-{'on' if self.graphs else 'off'}-{sizes}"

    def argv(self, gradlab: str, device: str, quick: bool, window: float | None) -> list[str]:
        sizes = ",".join(map(str, self.sizes))
        if len(self.sizes) == 1:
            sizes += ","  # one size, not "1 to N" (`--pack 4` means 1, 2, 4)
        argv = [gradlab, "bench", "--json", "--device", device, "--models", self.model,
                f"--{'pack' if self.kind == 'packs' else 'processes'}", sizes,
                "--cuda-graphs" if self.graphs else "--no-cuda-graphs"]
        if self.kind == "packs" and quick:
            argv += ["--quick", "--steps", "1"]
        if self.kind == "processes" and window is not None:
            argv += ["--window", str(window)]
        return argv


def _default_first(sizes: list[int]) -> list[int]:
    return sorted(sizes, key=lambda n: (n != 4, -n))


def plan(models: list[str], packs: list[int], processes: list[int], cuda: bool = True,
         ) -> list[Measurement]:
    """Every measurement in the order it is made (on the CPU, where there are no CUDA graphs,
    those without)."""
    out: list[Measurement] = []
    for model in models:
        out.append(Measurement(model, "packs", False, tuple(sorted(packs))))
        if cuda:
            out += [Measurement(model, "packs", True, (n,)) for n in _default_first(packs)]
        for graphs in (True, False) if cuda else (False,):
            out += [Measurement(model, "processes", graphs, (n,))
                    for n in _default_first(processes)]
    return out


def _run(argv: list[str], timeout: float, log: Any) -> tuple[dict[str, Any] | None, str]:
    """The command's JSON, or None and why; its process group is killed at the timeout."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True,
                            start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, f"stopped at its {timeout:.0f} s timeout"
    if proc.returncode != 0:
        return None, f"exit code {proc.returncode} (see the log)"
    try:
        return json.loads(stdout), ""
    except json.JSONDecodeError:
        return None, "no JSON on stdout"


def _restore(results: Path) -> None:
    """Per-measurement files back from a ``sharing.json`` that an earlier call returned."""
    combined = results / "sharing.json"
    if not combined.is_file():
        return
    for key, raw in json.loads(combined.read_text()).get("raw", {}).items():
        path = results / f"{key}.json"
        if not path.exists():
            path.write_text(json.dumps(raw))


def measure(todo: list[Measurement], results: Path, deadline: float, gradlab: str,
            device: str, quick: bool, window: float | None) -> dict[str, str]:
    """Make what is not in ``results`` yet while time is left; returns what was not made."""
    results.mkdir(parents=True, exist_ok=True)
    _restore(results)
    skipped: dict[str, str] = {}
    # How long the last measurement of each kind took: one that needs about as long as that
    # is not started when less is left (it would be killed half way).
    took: dict[tuple[str, bool], float] = {}
    with (results / "bench.log").open("a") as log:
        for item in todo:
            path = results / f"{item.key}.json"
            if path.exists():
                continue
            left = deadline - time.monotonic()
            if left < max(MIN_SECONDS, took.get((item.kind, item.graphs), 0.0)):
                skipped[item.key] = "out of time"
                continue
            print(f"measuring {item.key} ({left:.0f} s left)", flush=True)
            log.write(f"== {item.key}\n")
            log.flush()
            started = time.monotonic()
            raw, why = _run(item.argv(gradlab, device, quick, window), left, log)
            took[(item.kind, item.graphs)] = time.monotonic() - started
            if raw is None:
                skipped[item.key] = why
                print(f"  not measured: {why}", flush=True)
            else:
                path.write_text(json.dumps(raw))
    return skipped


def _rows(results: Path, model: str, kind: str, graphs: bool) -> dict[int, dict[str, Any]]:
    """Size -> that measurement's row, from every file of (model, kind, graphs)."""
    prefix = f"{model}-{kind}-graphs-{'on' if graphs else 'off'}-"
    size_key = "pack" if kind == "packs" else "processes"
    rows: dict[int, dict[str, Any]] = {}
    for path in sorted(results.glob(f"{prefix}*.json")):
        for row in json.loads(path.read_text()).get(model, []):
            rows[int(row[size_key])] = row
    return rows


def summarise(results: Path, models: list[str], skipped: dict[str, str],
              deciding: str = DECIDING_MODEL, cuda: bool = True) -> dict[str, Any]:
    """Every figure, each ratio to one run alone, and the decision."""
    raw = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*-graphs-*.json"))}
    environment: dict[str, Any] = next(
        (r["environment"] for r in raw.values() if "environment" in r), {})
    out: dict[str, Any] = {"device": environment.get("device_name", environment.get("device")),
                           "environment": environment, "models": {}, "not_measured": skipped,
                           "raw": raw}
    for model in models:
        alone_rows = _rows(results, model, "packs", False)
        alone = max((r["single_images_per_s"] for r in alone_rows.values()), default=None)
        table: dict[str, dict[int, float]] = {}
        for kind in ("packs", "processes"):
            for graphs in (True, False):
                column = f"{kind} graphs {'on' if graphs else 'off'}"
                table[column] = {n: r["images_per_s"]
                                 for n, r in _rows(results, model, kind, graphs).items()}
        out["models"][model] = {"alone_images_per_s": alone, "images_per_s": table}
    out["decision"] = decide(deciding, out["models"].get(deciding), cuda)
    return out


def decide(name: str, model: dict[str, Any] | None, cuda: bool = True) -> dict[str, Any]:
    """Packs or processes, from the deciding model's best of each as the worker trains them:
    with CUDA graphs on a GPU."""
    if model is None:
        return {"winner": None, "why": f"{name} was not measured"}
    graphs = "on" if cuda else "off"
    table = model["images_per_s"]
    packs, procs = table[f"packs graphs {graphs}"], table[f"processes graphs {graphs}"]
    if not packs or not procs:
        return {"winner": None, "why": f"packs and processes with CUDA graphs {graphs} are not "
                                       f"both measured for {name} yet"}
    best_pack = max(packs, key=lambda n: packs[n])
    best_proc = max(procs, key=lambda n: procs[n])
    if procs[best_proc] > packs[best_pack] * (1 + MARGIN):
        settings = {"GRADLAB_GPU_SHARING": "processes",
                    "GRADLAB_PROCESSES_PER_GPU": str(best_proc)}
        helm = f"worker.gpu.sharing=processes, worker.gpu.processesPerGpu={best_proc}"
        winner = "processes"
    else:
        settings = {"GRADLAB_GPU_SHARING": "packs", "GRADLAB_PACK_SIZE": str(best_pack)}
        helm = (f"worker.gpu.sharing=packs (default), settings.GRADLAB_PACK_SIZE={best_pack}")
        winner = "packs"
    return {"winner": winner, "model": name,
            "best_pack": {"size": best_pack, "images_per_s": packs[best_pack]},
            "best_processes": {"count": best_proc, "images_per_s": procs[best_proc]},
            "margin": MARGIN, "settings": settings, "helm": helm}


def table_markdown(summary: dict[str, Any]) -> str:
    """The throughput table: aggregate images/s and the ratio to one run alone."""
    lines = [f"Device: {summary['device']}; batch 100 per run, bf16 autocast on CUDA.", ""]
    for model, figures in summary["models"].items():
        alone = figures["alone_images_per_s"]
        columns = {name: rows for name, rows in figures["images_per_s"].items() if rows}
        sizes = sorted({n for column in columns.values() for n in column})
        lines += [f"{model}: one run alone {_rate(alone)} img/s", "",
                  "| runs | " + " | ".join(columns) + " |",
                  "| ---: |" + " ---: |" * len(columns)]
        for n in sizes:
            cells = [_cell(column.get(n), alone) for column in columns.values()]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("")
    decision = summary["decision"]
    if decision["winner"] is None:
        lines.append(f"No decision: {decision['why']}.")
    else:
        setting = " ".join(f"{k}={v}" for k, v in decision["settings"].items())
        lines.append(f"Winner on {decision['model']}: {decision['winner']} (best pack: "
                     f"{decision['best_pack']['size']} runs, "
                     f"{_rate(decision['best_pack']['images_per_s'])} img/s; best processes: "
                     f"{decision['best_processes']['count']}, "
                     f"{_rate(decision['best_processes']['images_per_s'])} img/s). "
                     f"Setting: {setting} (Helm: {decision['helm']}).")
    for key, why in summary["not_measured"].items():
        lines.append(f"Not measured: {key} ({why}).")
    return "\n".join(lines) + "\n"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _cell(value: float | None, alone: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} ({value / alone:.2f}x)" if alone else f"{value:,.0f}"


def _sizes(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg38,vgg08")
    parser.add_argument("--packs", default="1,2,4,8")
    parser.add_argument("--processes", default="1,2,4,8")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for measuring")
    parser.add_argument("--results", type=Path, default=Path("runs/gpu-measure"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--gradlab", default="gradlab", help="the gradlab command")
    parser.add_argument("--quick", action="store_true", help="one round of one step per "
                        "pack rate (a dry run)")
    parser.add_argument("--window", type=float, help="--processes' common window, seconds")
    parser.add_argument("--decide-on", default=DECIDING_MODEL, help="the model whose figures "
                        "decide between packs and processes")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    deadline = time.monotonic() + args.budget
    cuda = args.device != "cpu"
    todo = plan(models, _sizes(args.packs), _sizes(args.processes), cuda)
    skipped = measure(todo, args.results, deadline, args.gradlab, args.device, args.quick,
                      args.window)
    summary = summarise(args.results, models, skipped, args.decide_on, cuda)
    (args.results / "sharing.json").write_text(json.dumps(summary, indent=1))
    text = table_markdown(summary)
    (args.results / "sharing.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
