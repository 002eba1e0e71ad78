"""Remote verbs: ``gradlab submit | ls | show | gradflow | report | cancel | logs`` against a
gradlab server (``--url``, else ``GRADLAB_URL``; token from ``GRADLAB_TOKEN``), through
``gradlab.client``.

Tables for people, ``--json`` for scripts, and one ``error:`` line on failure with an exit
code that says what kind (see ``ExitCode``).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, TypedDict, TypeVar

import typer

from gradlab.client import (
    ApiError,
    AuthenticationError,
    GradlabClient,
    NotFoundError,
    ServerUnreachableError,
    ValidationError,
)

# The verbs this module adds to `gradlab` (cli.py merges every module's).
commands = typer.Typer()

E = TypeVar("E")
S = TypeVar("S")


class _Owner(TypedDict, total=False):
    """Whose events: one of the two keys, as ``GradlabClient.events`` takes them."""

    experiment_id: str
    study_id: str


class ExitCode(IntEnum):
    OK = 0
    RUN_FAILED = 1  # --wait: a run ended failed, cancelled or diverged
    INVALID = 2  # a spec or option the server (or the command) refused; an unreadable file
    NOT_FOUND = 3  # no such experiment or study
    AUTH = 4  # no token, or one the server does not accept
    UNAVAILABLE = 5  # the server cannot be reached, or answered with a server error


UrlOption = Annotated[
    str | None, typer.Option("--url", help="gradlab server (default: GRADLAB_URL)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable JSON on stdout")]
ExperimentOrStudyId = Annotated[str, typer.Argument(metavar="ID", help="experiment or study id")]
STUDY_KEYS = frozenset({"grid", "experiments", "base"})


def _fail(message: str, code: ExitCode) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(int(code))


@contextmanager
def _errors_as_exit_codes() -> Iterator[None]:
    try:
        yield
    except ValidationError as exc:
        problems = "; ".join(f"{p.field}: {p.reason}" for p in exc.errors) or exc.detail
        raise _fail(f"invalid: {problems}", ExitCode.INVALID) from None
    except NotFoundError as exc:
        raise _fail(exc.detail, ExitCode.NOT_FOUND) from None
    except AuthenticationError as exc:
        raise _fail(f"{exc.detail} (set GRADLAB_TOKEN)", ExitCode.AUTH) from None
    except ApiError as exc:
        code = ExitCode.UNAVAILABLE if exc.status >= 500 else ExitCode.INVALID
        raise _fail(str(exc), code) from None
    except ServerUnreachableError as exc:
        raise _fail(f"{exc} (set GRADLAB_URL or --url)", ExitCode.UNAVAILABLE) from None


def _client(url: str | None) -> GradlabClient:
    return GradlabClient(url)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _console() -> Any:
    from rich.console import Console

    return Console()


def _either(experiment: Callable[[], E], study: Callable[[], S]) -> E | S:
    """An id names an experiment or a study: try the experiment first."""
    try:
        return experiment()
    except NotFoundError:
        return study()


# --- submit -----------------------------------------------------------------------------------


def _read_spec(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror}", ExitCode.INVALID) from None
    except yaml.YAMLError as exc:
        raise _fail(f"{path} is not YAML or JSON: {exc}", ExitCode.INVALID) from None
    if not isinstance(data, dict):
        raise _fail(f"{path} must hold a mapping (an experiment or a study)", ExitCode.INVALID)
    return data


@commands.command("submit")
def submit_command(
    spec_file: Annotated[Path, typer.Argument(help="experiment or study spec (YAML or JSON)")],
    wait: Annotated[bool, typer.Option("--wait", help="follow the runs until they end")] = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit an experiment (or a study: a spec with grid/experiments/base) to the server."""
    spec = _read_spec(spec_file)
    with _errors_as_exit_codes(), _client(url) as client:
        if STUDY_KEYS & spec.keys():
            study = client.submit_study(spec)
            kind, ident = "study", study.id
            summary = f"study {study.id}: {study.cells} cells, {study.runs_queued} runs queued"
            created: dict[str, Any] = study.model_dump(mode="json")
        else:
            experiment = client.submit_experiment(spec)
            kind, ident = "experiment", experiment.id
            summary = f"experiment {experiment.id}: {len(experiment.runs)} runs queued"
            created = experiment.model_dump(mode="json")
        if as_json and not wait:
            _print_json(created)
        elif not as_json:
            typer.echo(summary)
        if wait:
            statuses = _follow_with_bars(client, kind, ident, quiet=as_json)
            if as_json:
                _print_json({**created, "final": statuses})
            if any(s != "succeeded" for s in statuses.values()):
                raise typer.Exit(int(ExitCode.RUN_FAILED))


def _follow_with_bars(client: GradlabClient, kind: str, ident: str, quiet: bool) -> dict[str, str]:
    """A progress bar per run, moved by the event stream; returns run id -> final status."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    key: _Owner = {"experiment_id": ident} if kind == "experiment" else {"study_id": ident}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"))
    bars: dict[str, Any] = {}
    final: dict[str, str] = {}
    with Progress(*columns, console=_console(), disable=quiet) as progress:
        for event in client.events(**key):
            data = event.data
            runs = data.get("runs") if event.event == "snapshot" else [data]
            if event.event == "end":
                final = dict(data["runs"])
                break
            for run in runs or []:
                if run["run_id"] not in bars:
                    label = f"seed {run['seed']} ({run['run_id'][:8]})"
                    bars[run["run_id"]] = progress.add_task(
                        label, total=run.get("epochs_planned") or None, status=""
                    )
                task = bars[run["run_id"]]
                if event.event == "epoch":
                    progress.update(task, completed=run["epoch"] + 1,
                                    status=f"val loss {_number(run.get('val_loss'))}")
                else:
                    progress.update(task, completed=run["epochs_done"], status=run["status"])
    return final


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# --- ls, show ---------------------------------------------------------------------------------


@commands.command("ls")
def ls_command(
    status: Annotated[str | None, typer.Option("--status", help="only this status")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many")] = 50,
    studies: Annotated[bool, typer.Option("--studies", help="list studies instead")] = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List experiments (newest first), or studies with --studies."""
    from rich.table import Table

    with _errors_as_exit_codes(), _client(url) as client:
        if studies:
            rows = [s.model_dump(mode="json") for s in client.studies(limit)]
            columns: tuple[str, ...] = ("id", "name", "scale", "cells", "created_at")
        else:
            items = client.experiments(status=status, limit=limit)
            rows = [e.model_dump(mode="json") for e in items]
            columns = ("id", "name", "status", "created_at")
    if as_json:
        _print_json(rows)
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    _console().print(table)


@commands.command("show")
def show_command(
    ident: ExperimentOrStudyId,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """An experiment's runs and summary, or a study's cell x seed completion."""
    with _errors_as_exit_codes(), _client(url) as client:
        shown = _either(lambda: client.experiment(ident), lambda: client.study(ident))
    if as_json:
        _print_json(shown.model_dump(mode="json"))
        return
    from rich.table import Table

    from gradlab.client.models import Experiment

    console = _console()
    if isinstance(shown, Experiment):
        console.print(f"[bold]{shown.name}[/bold] {shown.id}: {shown.status}")
        table = Table("seed", "status", "epochs", "attempt", "test acc", "error")
        for run in shown.runs:
            acc = (run.test or {}).get("acc")
            table.add_row(str(run.seed), run.status, f"{run.epochs_done}/{shown.epochs_planned}",
                          str(run.attempt), _number(acc), (run.error or "")[:80])
        console.print(table)
        for name, stat in shown.summary.get("metrics", {}).items():
            if stat.get("n"):
                console.print(f"  {name}: {_number(stat['mean'])} +- {_number(stat['std'])} "
                              f"(n={stat['n']})")
        return
    console.print(f"[bold]{shown.name}[/bold] {shown.id} ({shown.scale}): "
                  f"{shown.runs_finished}/{shown.runs_planned} runs finished")
    table = Table("cell", *(f"seed {s.seed}" for s in shown.cells[0].seeds) if shown.cells else ())
    for cell in shown.cells:
        table.add_row(cell.name, *(f"{s.status} {s.epochs_done}/{s.epochs_planned}"
                                   for s in cell.seeds))
    console.print(table)


# --- gradflow, report, cancel -----------------------------------------------------------------


@commands.command("gradflow")
def gradflow_command(
    ident: Annotated[str, typer.Argument(metavar="ID", help="experiment id")],
    stat: Annotated[str, typer.Option(help="mean_abs, max_abs or l2")] = "mean_abs",
    window: Annotated[str, typer.Option(help="last_batch or epoch_mean")] = "last_batch",
    seed: Annotated[int | None, typer.Option(help="one seed (default: across seeds)")] = None,
    png: Annotated[Path | None, typer.Option("--png", help="write the figure here")] = None,
    csv: Annotated[Path | None, typer.Option("--csv", help="write the tidy CSV here")] = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Gradient flow per layer (depth order): a table of the first and last epochs, the
    figure (--png) or every number (--csv)."""
    if png and csv:
        raise _fail("give --png or --csv, not both", ExitCode.INVALID)
    options: dict[str, Any] = {"stat": stat, "window": window, "seed": seed}
    with _errors_as_exit_codes(), _client(url) as client:
        if png:
            png.write_bytes(client.gradflow_png(ident, **options))
            typer.echo(f"wrote {png}")
            return
        if csv:
            csv.write_text(client.gradflow_csv(ident, **options))
            typer.echo(f"wrote {csv}")
            return
        flow = client.gradflow(ident, **options)
    if as_json:
        _print_json(flow.model_dump(mode="json"))
        return
    _gradflow_table(flow.layers, flow.across_seeds, f"{stat} ({window})")


def _gradflow_table(layers: list[str], across: dict[str, Any], title: str) -> None:
    from rich.table import Table

    epochs, mean = across.get("epochs") or [], across.get("mean") or []
    if not epochs:
        typer.echo("no epoch recorded yet")
        return
    shown = sorted({0, len(epochs) - 1})
    table = Table("layer", *(f"epoch {epochs[i]}" for i in shown), title=title)
    for j, layer in enumerate(layers):
        table.add_row(layer, *(_scientific(mean[i][j]) for i in shown))
    _console().print(table)


def _scientific(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


@commands.command("report")
def report_command(
    study_id: Annotated[str, typer.Argument(metavar="STUDY", help="study id")],
    out: Annotated[Path, typer.Option("--out", help="folder for report.html and report.json")],
    url: UrlOption = None,
) -> None:
    """Write a study's report (HTML with its figures, and JSON) into a folder."""
    with _errors_as_exit_codes(), _client(url) as client:
        report = client.report_json(study_id)
        html = client.report_html(study_id)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        (out / "report.html").write_text(html)
    except OSError as exc:
        raise _fail(f"cannot write to {out}: {exc.strerror}", ExitCode.INVALID) from None
    typer.echo(f"wrote {out / 'report.html'} and {out / 'report.json'}")


@commands.command("cancel")
def cancel_command(
    ident: ExperimentOrStudyId,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Stop an experiment's (or every cell of a study's) runs: queued ones now, running ones
    after their epoch (checkpoint kept)."""
    with _errors_as_exit_codes(), _client(url) as client:
        stopped = _either(lambda: client.cancel(ident), lambda: client.cancel_study(ident))
    if as_json:
        _print_json(stopped.model_dump(mode="json"))
    else:
        typer.echo(f"cancel requested for {stopped.id}")


# --- logs -------------------------------------------------------------------------------------


@commands.command("logs")
def logs_command(
    ident: ExperimentOrStudyId,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="stream until the runs end")
    ] = False,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """The runs' events: every epoch and status change (with --follow, live until they end)."""
    with _errors_as_exit_codes(), _client(url) as client:
        key = _either(lambda: _Owner(experiment_id=client.experiment(ident).id),
                      lambda: _Owner(study_id=client.study(ident).id))
        if not follow:
            _print_history(client, key, as_json)
            return
        # from the first event on record ("0"): the history, then live until every run ends
        for event in client.events(**key, last_event_id="0"):
            _print_event(event.event, event.data, as_json)


def _print_history(client: GradlabClient, key: _Owner, as_json: bool) -> None:
    """Every recorded epoch and each run's status, from the REST views."""
    if "experiment_id" in key:
        experiment_ids = [key["experiment_id"]]
    else:
        experiment_ids = [c.experiment_id for c in client.study(key["study_id"]).cells]
    for experiment_id in dict.fromkeys(experiment_ids):
        experiment = client.experiment(experiment_id)
        metrics = client.metrics(experiment_id)
        for series in metrics["runs"]:
            for i, epoch in enumerate(series["epochs"]):
                numbers = {k: series[k][i] for k in ("train_loss", "train_acc", "val_loss",
                                                     "val_acc", "lr", "seconds")}
                _print_event("epoch", {"experiment_id": experiment_id, "seed": series["seed"],
                                       "epoch": epoch, **numbers}, as_json)
        for run in experiment.runs:
            _print_event("status", {"experiment_id": experiment_id, "run_id": run.id,
                                    "seed": run.seed, "status": run.status,
                                    "attempt": run.attempt, "epochs_done": run.epochs_done,
                                    "epochs_planned": experiment.epochs_planned,
                                    "error": run.error}, as_json)


def _print_event(kind: str, data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"event": kind, **data}))
    elif kind == "snapshot":
        for run in data["runs"]:
            _print_event("status", run, as_json)
    elif kind == "epoch":
        numbers = " ".join(f"{k}={_number(data.get(k))}"
                           for k in ("train_loss", "train_acc", "val_loss", "val_acc", "seconds"))
        typer.echo(f"epoch  seed {data['seed']:<6} epoch {data['epoch']:<4} {numbers}")
    elif kind == "status":
        error = f" error: {data['error']}" if data.get("error") else ""
        typer.echo(f"status seed {data['seed']:<6} {data['status']:<10} attempt {data['attempt']} "
                   f"epochs {data['epochs_done']}/{data.get('epochs_planned') or '?'}{error}")
    else:
        typer.echo(f"{kind}: {json.dumps(data)}")
    sys.stdout.flush()


