"""Print `gradlab bench --pack` figures and project the full-scale seed study from them.

    python scripts/project_packed_study.py BENCH_PACK.json [--pack-size 4]

Runs of examples/seed-study.yaml are grouped by fusion key (gradlab.science.fusion), as the
worker packs them; each group trains in packs of up to --pack-size. A pack of n runs takes,
per step, the fused step time measured for the smallest measured size >= n. Steps per epoch:
47,500 / 100 training images (validation, ~5% more work, and epoch writes are left out).
Prints the projected minutes alone (pack size 1) and packed.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

from gradlab.science.fusion import fusion_key
from gradlab.science.study import expand, load_study

STUDY = Path(__file__).resolve().parents[1] / "examples" / "seed-study.yaml"
MODEL = {8: "vgg08", 38: "vgg38"}


def step_seconds(rows: list[dict[str, float]], size: int) -> float:
    fits = [r for r in rows if r["pack"] >= size]
    if not fits:
        raise SystemExit(f"no measurement for a pack of {size}")
    return min(fits, key=lambda r: r["pack"])["fused_step_seconds"]


def project(bench: dict[str, list[dict[str, float]]], pack_size: int) -> float:
    """Seconds of training steps for the whole study at full scale."""
    cells = expand(load_study(STUDY.read_text(), source=str(STUDY)))
    groups: Counter[tuple[str, int, int, int]] = Counter()
    for cell in cells:
        hp = cell.spec.hyperparameters
        groups[(fusion_key(cell.spec), cell.spec.depth or 0, hp.epochs, hp.batch_size)] += len(
            cell.spec.seeds)
    total = 0.0
    for (_, depth, epochs, batch), runs in groups.items():
        steps = epochs * math.ceil(47_500 / batch)
        full, rest = divmod(runs, pack_size)
        sizes = [pack_size] * full + ([rest] if rest else [])
        total += sum(steps * step_seconds(bench[MODEL[depth]], n) for n in sizes)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("--pack-size", type=int, default=4)
    args = parser.parse_args()
    bench = json.loads(args.bench.read_text())
    print(f"{args.bench}: CUDA graphs {'on' if bench.get('cuda_graphs') else 'off'}")
    for model in ("vgg08", "vgg38"):
        for row in bench.get(model, []):
            print(f"  {model} pack {row['pack']:2d}: fused {row['images_per_s']:9.0f} img/s, "
                  f"alone {row['single_images_per_s']:9.0f} img/s, "
                  f"x{row['ratio_to_separate']:.2f} vs N separate")
    alone, packed = project(bench, 1), project(bench, args.pack_size)
    print(f"projected seed study, full scale, training steps: {alone / 60:.1f} min alone, "
          f"{packed / 60:.1f} min in packs of up to {args.pack_size}")


if __name__ == "__main__":
    main()
