"""VGG08 vs VGG38: the seed report's gradient-flow comparison, drawn from a gradlab server.

Each network's mean |gradient| per layer (mean across its seeds, a band for their spread) at
its first and last epoch, on one log axis; layers are placed by relative depth (input 0,
output 1), so the 9 layers of VGG08 and the 39 of VGG38 share the axis.

    pip install 'gradlab[pandas]'
    python examples/gradflow_vgg08_vs_vgg38.py --study STUDY_ID --out gradflow.png
    python examples/gradflow_vgg08_vs_vgg38.py --experiments VGG08_ID VGG38_ID

With ``--study`` the cells named vgg08 and vgg38 are drawn (the seed study's:
examples/seed-study.yaml). The server and token come from --url/--token or GRADLAB_URL and
GRADLAB_TOKEN.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gradlab.client import GradlabClient
from gradlab.client.client import Stat

SEED_CELLS = ("vgg08", "vgg38")


def study_cells(client: GradlabClient, study_id: str, names: Sequence[str]) -> list[str]:
    """The experiment ids of a study's cells named ``names``, in that order."""
    cells = {cell.name: cell.experiment_id for cell in client.study(study_id).cells}
    missing = [n for n in names if n not in cells]
    if missing:
        raise SystemExit(f"study {study_id} has no cell named {', '.join(missing)}"
                         f" (cells: {', '.join(cells)})")
    return [cells[n] for n in names]


def draw(client: GradlabClient, experiment_ids: Sequence[str], stat: Stat = "mean_abs") -> Figure:
    """A line per experiment and epoch drawn (first dashed, last solid): the mean across its
    seeds, with a band from the seeds' lowest to highest value."""
    figure = Figure(figsize=(9, 5), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for k, experiment_id in enumerate(experiment_ids):
        name = client.experiment(experiment_id).name
        mean = client.gradflow_frame(experiment_id, stat=stat, across_seeds=True)
        if mean.empty:
            raise SystemExit(f"{name} has no epoch recorded yet")
        seeds = client.gradflow_frame(experiment_id, stat=stat)
        spread = seeds.groupby(["epoch", "layer_index"])["value"].agg(["min", "max"])
        epochs = sorted(mean["epoch"].unique())
        for epoch, style in ((epochs[0], "--"), (epochs[-1], "-")):
            at = mean[mean["epoch"] == epoch].sort_values("layer_index")
            band = spread.loc[epoch].reindex(at["layer_index"])
            ax.plot(at["relative_depth"], at["mean"], style, color=f"C{k}", marker="o",
                    markersize=3, label=f"{name}, epoch {epoch}")
            ax.fill_between(at["relative_depth"], band["min"], band["max"], color=f"C{k}",
                            alpha=0.15, linewidth=0)
    ax.set_yscale("log")
    ax.set_xlabel("relative depth (input 0 -> output 1)")
    ax.set_ylabel(f"{stat} of the weight gradient (last batch)")
    ax.set_title("Gradient flow: mean across seeds, band from the lowest to the highest seed")
    ax.legend(fontsize="small")
    return figure


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", help="a study id: its cells vgg08 and vgg38 are drawn")
    which.add_argument("--experiments", nargs="+", metavar="ID", help="experiment ids to draw")
    parser.add_argument("--url", help="the server (default: GRADLAB_URL)")
    parser.add_argument("--token", help="an API token (default: GRADLAB_TOKEN)")
    parser.add_argument("--stat", default="mean_abs", choices=("mean_abs", "max_abs", "l2"))
    parser.add_argument("--out", type=Path, default=Path("gradflow-vgg08-vs-vgg38.png"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args: Any = parse(argv)
    with GradlabClient(args.url, token=args.token) as client:
        ids = args.experiments or study_cells(client, args.study, SEED_CELLS)
        figure = draw(client, ids, args.stat)
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
