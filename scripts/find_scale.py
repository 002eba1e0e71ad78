"""Which reduced scale shows a study's findings? Train every candidate size and diagnose it.

Issue 15 asks for the smallest ``--scale`` at which the seed study's report states all five
findings. This trains the whole study at each candidate size (train images x epochs, the
study's own schedule unless ``--schedule`` replaces it), same-shaped runs as fused packs, and
prints which findings the unchanged diagnostics (``science.diagnostics``, default thresholds)
state at each, with the figures that decide the overfitting ones.

    python scripts/find_scale.py examples/seed-study.yaml --candidates 500x60,1000x40 \\
        --data-dir ../shared/data/cifar100 --device cuda --jobs 8 --out runs/find-scale.json

Every run's per-epoch metrics go to ``--out`` (JSON lines), so a sweep made on a GPU can be
read again here: ``--figures DIR --from-saved runs/find-scale.jsonl`` draws the report's
weight-decay figure of each saved candidate without training anything. Run on a GPU it is a
search, not the answer: the answer is the study at the chosen size (``gradlab study run ...
--scale medium``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FINDING_KINDS = ("vanishing_gradients", "not_training", "degradation", "overfitting", "fix")


@dataclass(frozen=True)
class Candidate:
    """One size to try: the first ``train_limit`` training images for ``epochs`` epochs."""

    train_limit: int
    epochs: int
    schedule: str | None = None

    @property
    def label(self) -> str:
        return f"{self.train_limit}x{self.epochs}" + (f"-{self.schedule}" if self.schedule else "")


def parse_candidates(text: str, schedule: str | None) -> list[Candidate]:
    """``500x60,1000x40:constant`` -> candidates; a clear error for anything else."""
    found = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        size_epochs, _, own_schedule = part.partition(":")
        size, sep, epochs = size_epochs.partition("x")
        if (
            not sep
            or not size.isdigit()
            or not epochs.isdigit()
            or own_schedule not in ("", "cosine", "constant")
        ):
            raise SystemExit(f"--candidates: {part!r} is not IMAGESxEPOCHS[:cosine|constant]")
        found.append(Candidate(int(size), int(epochs), own_schedule or schedule))
    if not found:
        raise SystemExit("--candidates: name at least one IMAGESxEPOCHS")
    return found


def scaled_cells(study_file: Path, candidate: Candidate) -> list[Any]:
    """The study's cells with every spec shrunk to ``candidate`` (as ``apply_scale`` does)."""
    from gradlab.science.study import ReducedScale, apply_scale, expand, load_study

    study = load_study(study_file.read_text(), source=str(study_file))
    reduced = ReducedScale(epochs=candidate.epochs, train_limit=candidate.train_limit)
    cells = []
    for cell in expand(study, "full"):
        spec = apply_scale(cell.spec, "medium", reduced)
        if candidate.schedule:
            spec = spec.with_updates({"hyperparameters.lr_schedule": candidate.schedule})
        cells.append((cell.name, dict(cell.coordinates), spec))
    return cells


def train_group(
    data_dir: str, device: str, specs: list[dict[str, Any]], seeds: list[int]
) -> list[Any]:
    """Train one fused pack (same-shaped runs) in this process: a TrainingResult per run."""
    import torch

    from gradlab.core.data import load_cifar
    from gradlab.core.pack import PackRun, fit_pack
    from gradlab.science.spec import ExperimentSpec

    torch.set_num_threads(1)
    data = load_cifar(Path(data_dir), "cifar100")
    runs = [
        PackRun(ExperimentSpec.model_validate(s), seed)
        for s, seed in zip(specs, seeds, strict=True)
    ]
    return fit_pack(runs, data, device=device, cuda_graphs=False)


def plan(study_file: Path, candidates: Sequence[Candidate]) -> list[dict[str, Any]]:
    """Every pack to train: (candidate, its runs), grouped by the fusion key."""
    from gradlab.science.fusion import fusion_key

    packs = []
    labels = [c.label for c in candidates]
    for candidate in candidates:
        groups: dict[str, list[tuple[str, dict[str, Any], int]]] = defaultdict(list)
        for name, _coords, spec in scaled_cells(study_file, candidate):
            for seed in spec.seeds:
                groups[fusion_key(spec)].append((name, spec.model_dump(mode="json"), seed))
        packs += [{"candidate": candidate.label, "runs": runs} for runs in groups.values()]
    # candidates in the order given (so an interrupted sweep has its first ones whole), the
    # biggest pack of each first so that none ends waiting on it
    return sorted(packs, key=lambda p: (labels.index(p["candidate"]), -len(p["runs"])))


def trained_cells(
    study_file: Path, candidate: Candidate, results: dict[tuple[str, int], Any]
) -> list[Any]:
    """One candidate's cells with the runs trained for them."""
    from gradlab.science.study_results import CellResult, SeedRun

    return [
        CellResult(
            name=name,
            coordinates=coords,
            spec=spec,
            runs=[
                SeedRun.from_training_result(seed, results[name, seed])
                for seed in spec.seeds
                if (name, seed) in results
            ],
        )
        for name, coords, spec in scaled_cells(study_file, candidate)
    ]


def diagnose_candidate(candidate: Candidate, cells: Sequence[Any]) -> dict[str, Any]:
    """The findings the default diagnostics state for one candidate's cells."""
    from gradlab.science.diagnostics import diagnose
    from gradlab.science.diagnostics.evidence import OverfittingFixEvidence

    findings = diagnose(cells)
    kinds = {kind: [f.sentence for f in findings if f.kind == kind] for kind in FINDING_KINDS}
    wd_fix = [f.sentence for f in findings if isinstance(f.evidence, OverfittingFixEvidence)]
    return {
        "candidate": candidate.label,
        "findings": kinds,
        "weight_decay_fix": wd_fix,
        "kinds_found": sorted(k for k, v in kinds.items() if v),
    }


def cells_from_saved(study_file: Path, row: dict[str, Any]) -> list[Any]:
    """A saved candidate's cells with their runs' per-epoch metrics (no gradient flow)."""
    from gradlab.science.records import EpochMetrics
    from gradlab.science.study_results import CellResult, SeedRun

    candidate = parse_candidates(row["candidate"].replace("-", ":"), None)[0]
    cells = []
    for name, coords, spec in scaled_cells(study_file, candidate):
        runs = [
            SeedRun(
                seed=seed,
                status="succeeded",
                layers=(),
                epochs=[EpochMetrics(**e) for e in row["runs"][f"{name}/{seed}"]["epochs"]],
            )
            for seed in spec.seeds
            if f"{name}/{seed}" in row["runs"]
        ]
        cells.append(CellResult(name=name, coordinates=coords, spec=spec, runs=runs))
    return cells


def draw_weight_decay_figures(cells: Sequence[Any], folder: Path, label: str) -> list[Path]:
    """The report's weight-decay figure of each group of cells, as ``folder/LABEL-NAME.png``."""
    from gradlab.science.report.figures import weight_decay_figure, weight_decay_groups

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for group in weight_decay_groups(cells):
        figure = weight_decay_figure(group)
        if figure is not None:
            path = folder / f"{label}-{figure.name}.png"
            figure.figure.savefig(path)
            written.append(path)
    return written


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("study", type=Path)
    add(
        "--candidates",
        default="",
        help="IMAGESxEPOCHS[:cosine|constant],... e.g. 500x60,1000x40:constant",
    )
    add(
        "--schedule",
        choices=("cosine", "constant"),
        default=None,
        help="the schedule of candidates that name none (default: the study's)",
    )
    add("--data-dir", default="data")
    add("--device", default="cpu")
    add("--jobs", type=int, default=1, help="packs trained at once")
    add(
        "--out",
        type=Path,
        default=Path("runs/find-scale.jsonl"),
        help="a JSON line per candidate, written as soon as it is diagnosed",
    )
    add("--figures", type=Path, help="draw each candidate's weight-decay figure in this folder")
    add("--from-saved", type=Path, help="a saved --out: draw its --figures, train nothing")
    args = parser.parse_args(argv)
    if not args.candidates and args.from_saved is None:
        parser.error("--candidates is required (unless --from-saved)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_saved is not None:
        for line in args.from_saved.read_text().splitlines():
            row = json.loads(line)
            cells = cells_from_saved(args.study, row)
            for path in draw_weight_decay_figures(
                cells, args.figures or Path("."), row["candidate"]
            ):
                print(path)
        return 0
    sweep(args, {c.label: c for c in parse_candidates(args.candidates, args.schedule)})
    return 0


def sweep(args: argparse.Namespace, candidates: dict[str, Candidate]) -> None:
    """Train every candidate's packs, ``args.jobs`` at once; report each as it completes."""
    packs = plan(args.study, list(candidates.values()))
    print(
        f"{len(packs)} packs, {sum(len(p['runs']) for p in packs)} runs, "
        f"{args.jobs} at once on {args.device}",
        flush=True,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("")
    left: dict[str, int] = defaultdict(int)
    for pack in packs:
        left[pack["candidate"]] += 1
    results: dict[str, dict[tuple[str, int], Any]] = defaultdict(dict)
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {
            pool.submit(
                train_group,
                args.data_dir,
                args.device,
                [r[1] for r in p["runs"]],
                [r[2] for r in p["runs"]],
            ): p
            for p in packs
        }
        for done, future in enumerate(as_completed(futures), 1):
            pack, label = futures[future], futures[future]["candidate"]
            for (name, _spec, seed), result in zip(pack["runs"], future.result(), strict=True):
                results[label][name, seed] = result
            print(
                f"[{time.perf_counter() - started:6.0f} s] {done}/{len(packs)} {label} "
                f"{pack['runs'][0][0]} (+{len(pack['runs']) - 1})",
                flush=True,
            )
            left[label] -= 1
            if left[label] == 0:
                finished = results.pop(label)
                cells = trained_cells(args.study, candidates[label], finished)
                report(candidates[label], cells, finished, args.out)
                if args.figures is not None:
                    draw_weight_decay_figures(cells, args.figures, label)


def report(
    candidate: Candidate, cells: Sequence[Any], results: dict[tuple[str, int], Any], out: Path
) -> None:
    """Print one candidate's findings and append them, with every run's epochs, to ``out``."""
    row = diagnose_candidate(candidate, cells)
    print(
        f"== {row['candidate']}: {', '.join(row['kinds_found'])}"
        f"{'  + weight-decay fix' if row['weight_decay_fix'] else ''}",
        flush=True,
    )
    for sentence in row["findings"]["overfitting"] + row["weight_decay_fix"]:
        print(f"   {sentence}", flush=True)
    row["runs"] = {
        f"{name}/{seed}": {k: r.to_json_dict()[k] for k in ("epochs", "test")}
        for (name, seed), r in results.items()
    }
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
