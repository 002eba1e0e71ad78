"""Draws the README's picture from a study folder that `gradlab study run` wrote.

    python scripts/readme_figure.py runs/seed-study docs/images/gradflow-vgg08-vs-vgg38.png

It reads the report's per-cell gradient-flow data (figures/gradflow-<cell>.json) and overlays
the plain VGG08 and VGG38 on one log axis, placed by relative depth (input 0, output 1) so
that networks of different depth line up, as the dashboard's compare view does.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

CELLS = (("vgg08", "tab:blue"), ("vgg38", "tab:red"))


def main(study_folder: Path, out: Path) -> None:
    figure, ax = plt.subplots(figsize=(7.0, 3.6), dpi=110)
    for cell, colour in CELLS:
        flow = json.loads((study_folder / "figures" / f"gradflow-{cell}.json").read_text())
        last = flow["mean"][-1]
        depth = [i / (len(last) - 1) for i in range(len(last))]
        ax.plot(depth, last, marker="o", markersize=2.5, color=colour,
                label=f"{cell} (epoch {flow['epochs'][-1]})")
    ax.set_yscale("log")
    ax.set_xlabel("relative depth (0 = first conv, 1 = classifier)")
    ax.set_ylabel("mean |gradient| (log)")
    ax.set_title("Gradient flow per layer, plain VGG08 vs VGG38 (CIFAR-100, smoke scale)",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
