"""The seed report's Tables 1 and 2 for any study: one row per cell, mean +- std over seeds."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

from gradlab.science.aggregate import Summary, final_summary, precision_label, summarize_test
from gradlab.science.layers import parameter_count as spec_parameter_count
from gradlab.science.study_results import CellResult

SUMMARY_COLUMNS: tuple[str, ...] = (
    "train_acc",
    "train_loss",
    "val_acc",
    "val_loss",
    "test_acc",
    "test_loss",
)


@dataclass(frozen=True)
class TableRow:
    """One cell: its configuration, progress, and final metrics across seeds."""

    name: str
    depth: int
    batch_norm: bool
    residual: bool
    learning_rate: float
    weight_decay: float
    parameters: int | None
    seeds_planned: list[int]
    seeds_finished: int
    epochs_planned: int
    epochs_done: dict[int, int]  # seed -> epochs finished
    summaries: dict[str, Summary]
    # what its seeds computed in (aggregate.precision_label); None before any started
    precision: str | None = None

    @property
    def epochs_done_text(self) -> str:
        done = [self.epochs_done.get(s, 0) for s in self.seeds_planned]
        low, high = min(done), max(done)
        span = f"{low}" if low == high else f"{low}-{high}"
        return f"{span}/{self.epochs_planned}"

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "depth": self.depth,
            "batch_norm": self.batch_norm,
            "residual": self.residual,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "parameters": self.parameters,
            "seeds_planned": self.seeds_planned,
            "seeds_finished": self.seeds_finished,
            "epochs_planned": self.epochs_planned,
            "epochs_done": {str(k): v for k, v in self.epochs_done.items()},
            "precision": self.precision,
            **{key: {"mean": s.mean, "std": s.std, "n": s.n} for key, s in self.summaries.items()},
        }


def cell_parameter_count(cell: CellResult) -> int | None:
    """The cell's parameter count (computed from its spec when the result does not carry it)."""
    if cell.parameters is not None:
        return cell.parameters
    return spec_parameter_count(cell.spec)


def table_rows(cells: list[CellResult]) -> list[TableRow]:
    rows = []
    for cell in cells:
        spec = cell.spec
        summaries = {
            "train_acc": final_summary(cell.runs, "train_acc"),
            "train_loss": final_summary(cell.runs, "train_loss"),
            "val_acc": final_summary(cell.runs, "val_acc"),
            "val_loss": final_summary(cell.runs, "val_loss"),
            "test_acc": summarize_test(cell.runs, "acc"),
            "test_loss": summarize_test(cell.runs, "loss"),
        }
        assert spec.depth is not None
        rows.append(
            TableRow(
                name=cell.name,
                depth=spec.depth,
                batch_norm=spec.batch_norm,
                residual=spec.residual,
                learning_rate=spec.hyperparameters.learning_rate,
                weight_decay=spec.hyperparameters.weight_decay,
                parameters=cell_parameter_count(cell),
                seeds_planned=list(spec.seeds),
                seeds_finished=sum(1 for r in cell.runs if r.finished),
                epochs_planned=spec.hyperparameters.epochs,
                epochs_done={r.seed: r.epochs_done for r in cell.runs},
                summaries=summaries,
                precision=precision_label(r.precision for r in cell.runs),
            )
        )
    return rows


def table_csv(rows: list[TableRow]) -> str:
    """Tidy CSV of the table: one line per cell, mean/std/n columns per metric."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = [
        "name",
        "depth",
        "batch_norm",
        "residual",
        "learning_rate",
        "weight_decay",
        "parameters",
        "seeds_planned",
        "seeds_finished",
        "epochs_done",
        "precision",
    ]
    for key in SUMMARY_COLUMNS:
        header += [f"{key}_mean", f"{key}_std", f"{key}_n"]
    writer.writerow(header)
    for row in rows:
        line: list[Any] = [
            row.name,
            row.depth,
            row.batch_norm,
            row.residual,
            repr(row.learning_rate),
            repr(row.weight_decay),
            row.parameters if row.parameters is not None else "",
            len(row.seeds_planned),
            row.seeds_finished,
            row.epochs_done_text,
            row.precision or "",
        ]
        for key in SUMMARY_COLUMNS:
            s = row.summaries[key]
            line += [
                "" if s.mean is None else repr(s.mean),
                "" if s.std is None else repr(s.std),
                s.n,
            ]
        writer.writerow(line)
    return out.getvalue()


TEXT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("train_acc", "train acc"),
    ("val_acc", "val acc"),
    ("test_acc", "test acc"),
    ("train_loss", "train loss"),
    ("val_loss", "val loss"),
    ("test_loss", "test loss"),
)


def row_cells_text(row: TableRow) -> list[str]:
    """The row as display strings (used by the HTML and the terminal table alike)."""
    flags = "+".join(f for f, on in (("BN", row.batch_norm), ("res", row.residual)) if on)
    return [
        row.name,
        str(row.depth),
        flags or "plain",
        f"{row.weight_decay:g}",
        "-" if row.parameters is None else f"{row.parameters:,}",
        f"{row.seeds_finished}/{len(row.seeds_planned)}",
        row.epochs_done_text,
        row.precision or "-",
        *(row.summaries[key].format() for key, _ in TEXT_COLUMNS),
    ]


TEXT_HEADER: list[str] = [
    "cell",
    "depth",
    "fixes",
    "wd",
    "params",
    "seeds done",
    "epochs",
    "precision",
    *(label for _, label in TEXT_COLUMNS),
]
