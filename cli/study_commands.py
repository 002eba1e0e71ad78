"""`gradlab study run FILE --scale smoke|medium|full --out DIR`: a whole study on this machine.

The embedded default, no servers: the study is submitted into a SQLite store in the folder
``DIR`` (``study_folder``: movable, small) exactly as ``POST /studies`` does (existing cells
reused), and its queued runs are trained in this process by the worker's own queue loop
(``study_training``: lease, per-epoch writes of metrics, gradient flow and checkpoint). Running
the command again skips finished runs and resumes unfinished ones from their last checkpoint.

``--time-limit SECONDS`` stops every run at an epoch boundary, its checkpoint written, before
the budget runs out (an epoch is predicted to take as long as the last one measured), keeps
time for the report, and exits 0 saying what is left and the command that resumes it.
``--cell NAME`` (repeatable) trains only those cells; the study is still submitted and reported
whole. Ctrl-C stops at the end of the epoch in progress; a second Ctrl-C stops at once. At the
end the report is read back from the store, written to ``DIR``, and summarised.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from sqlalchemy.orm import Session, sessionmaker

from gradlab.cli.study_folder import StudyFolder, last_report_seconds, note_report_seconds
from gradlab.cli.study_training import PlannedRun
from gradlab.science.study import SCALES, StudySpec, expand, load_study
from gradlab.science.study_results import CellResult
from gradlab.settings import WorkerSettings
from gradlab.worker.stopping import StopControl, TimeLimit

# The verbs this module adds to `gradlab` (cli.py merges every module's).
commands = typer.Typer()

study_app = typer.Typer(help="Studies: grids of experiments with one report.", no_args_is_help=True)
commands.add_typer(study_app, name="study")

# Kept from --time-limit for after training (the hand-back, the report and the exit): at least
# this, or 1.5 times what the folder's last report took to write plus this margin. The seed
# study's report at full scale took 168 s here (bench/study_folder_size.py: 20 figures drawn
# three times each), one at smoke scale a few seconds.
AFTER_TRAINING_SECONDS = 30.0
REPORT_TIME_FACTOR = 1.5
# The clock a time limit runs on (a test gives its own, to decide without depending on speed).
clock = time.monotonic


class StudyRunError(Exception):
    """A problem the user can fix (bad file, missing data); printed without a traceback."""


@study_app.command("run")
def run_command(
    file: Annotated[Path, typer.Argument(help="study spec (YAML or JSON)")],
    out: Annotated[Path, typer.Option("--out", help="folder for the database, checkpoints "
                                      "and report (movable: copy it and resume elsewhere)")],
    scale: Annotated[
        str, typer.Option(help="full (as specified); medium (3,000 images x 80 epochs: all "
                          "five findings, GPU-sized); smoke (3,000 x 3: minutes on a CPU)")
    ] = "full",
    data_dir: Annotated[
        Path | None, typer.Option(help="CIFAR folder (else GRADLAB_DATA_DIR, else ./data)")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    database_url: Annotated[
        str | None, typer.Option(help="store to use (default: SQLite file OUT/gradlab.db)")
    ] = None,
    pack: Annotated[bool, typer.Option(
        "--pack/--no-pack",
        help="train runs of the same shape as one fused model (up to GRADLAB_PACK_SIZE; "
             "unset: 4 on a GPU, alone on the CPU); --no-pack trains every run alone")] = True,
    time_limit: Annotated[float | None, typer.Option(
        "--time-limit", min=1, help="seconds: before they run out, stop every run at an "
        "epoch boundary (checkpoint written), report, and exit 0 saying what is left; the "
        f"same command resumes (at least {AFTER_TRAINING_SECONDS:.0f} s are kept for the "
        "report, more when the last report took longer)")
    ] = None,
    cell: Annotated[list[str] | None, typer.Option(
        "--cell", help="train only this cell (repeatable); the study is still submitted "
        "and reported whole")] = None,
) -> None:
    """Run every cell and seed of a study (resuming what a previous call left), then report."""
    started = clock()
    console = Console()
    if not console.is_terminal:
        console = Console(width=180)  # piped to a log: keep the table on one line per cell
    folder = None if database_url else StudyFolder(out)
    url = database_url or StudyFolder(out).database_url
    kept = _kept_for_the_report(out)
    try:
        limit = _time_limit(time_limit, kept, started)
        study = _load(file, scale)
        cells = _chosen_cells(study, scale, cell)
        out.mkdir(parents=True, exist_ok=True)
        factory, study_id = _submit(study, scale, url, own_folder=folder is not None)
        trained = _train(factory, study_id, cells, _settings(url, data_dir, device, pack,
                                                              folder), limit, console, kept)
    except StudyRunError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    if folder is not None:
        _drop_finished_checkpoints(factory, folder, study_id)
    reporting = clock()
    _report(study.name, study.description, scale, _results(factory, study_id), out, console,
            trained.elapsed)
    note_report_seconds(out, clock() - reporting)
    _say_what_is_left(console, factory, study_id, cells, trained, _resume_command(
        file, scale, out, device, database_url, pack, time_limit, cell))


def _kept_for_the_report(out: Path) -> float:
    last = last_report_seconds(out)
    if last is None:
        return AFTER_TRAINING_SECONDS
    return max(AFTER_TRAINING_SECONDS, REPORT_TIME_FACTOR * last + AFTER_TRAINING_SECONDS)


def _time_limit(seconds: float | None, kept: float, started: float) -> TimeLimit | None:
    if seconds is None:
        return None
    if seconds <= kept:
        raise StudyRunError(f"--time-limit {seconds:g}: {kept:.0f} s of it are kept for the "
                            "report and the hand-back; give more")
    # Counted from the command's start: loading and submitting spend the budget too.
    return TimeLimit(seconds - kept - (clock() - started), clock=clock)


def _load(file: Path, scale: str) -> StudySpec:
    if scale not in SCALES:
        raise StudyRunError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    try:
        text = file.read_text()
    except OSError as exc:
        raise StudyRunError(f"cannot read study file {file}: {exc.strerror}") from None
    from gradlab.services.errors import GradlabError
    from gradlab.services.studies import expand_within_limits
    from gradlab.settings import get_api_settings

    settings = get_api_settings()  # the service layer's limits, as the API applies them
    try:
        # The API's rules, before anything is stored: the caps (counted before expanding),
        # every cell valid at this scale and within the cost limits.
        study = load_study(text, source=str(file), max_cells=settings.max_study_cells,
                           max_runs=settings.max_study_runs)
        expand_within_limits(study, scale, settings)
        return study
    except GradlabError as exc:
        raise StudyRunError(f"{file}: {exc.detail}") from None
    except ValueError as exc:
        raise StudyRunError(str(exc)) from None


def _chosen_cells(study: StudySpec, scale: str, names: list[str] | None) -> set[str] | None:
    """The cells ``--cell`` names (None: all), each checked against the study's."""
    if not names:
        return None
    known = [c.name for c in expand(study, scale=scale)]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise StudyRunError(f"--cell {', '.join(unknown)}: no such cell in {study.name}; its "
                            f"cells are {', '.join(known)}")
    return set(names)


def _settings(url: str, data_dir: Path | None, device: str, pack: bool,
              folder: StudyFolder | None) -> WorkerSettings:
    """The worker's settings for this invocation; the study folder's checkpoints live in it,
    located from ``--out`` every time (the database keeps keys relative to that folder)."""
    update: dict[str, Any] = {"database_url": url, "device": device}
    if data_dir is not None:
        update["data_dir"] = data_dir
    if folder is not None:
        update["checkpoint_store"] = str(folder.checkpoints)
    if not pack:
        update["pack_size"] = 1
    return WorkerSettings(**update)


# --- the store path: submit into the store, train through the worker's queue loop ----------


def _submit(study: StudySpec, scale: str, url: str,
            *, own_folder: bool) -> tuple[sessionmaker[Session], str]:
    """Migrate the database, submit the study through the service layer (the API's limits,
    cells reused); the study's id."""
    from gradlab.dispatch.dispatchers import EmbeddedDispatcher
    from gradlab.services.errors import GradlabError
    from gradlab.services.studies import submit_study
    from gradlab.services.transaction import transaction
    from gradlab.settings import get_api_settings
    from gradlab.store.migrate import upgrade
    from gradlab.store.session import make_engine, make_session_factory
    from gradlab.store.users import EVERYONE
    from gradlab.worker.embedded import requeue_orphans

    upgrade(url)
    factory = make_session_factory(make_engine(url))
    try:
        # This process is the worker: nothing to wake, it trains what is queued once committed.
        with transaction(factory, EmbeddedDispatcher()) as tx:
            # Runs left "running" by a killed earlier call of this command go back to the
            # queue; in the study's own folder also those of another machine (the folder was
            # copied from there).
            requeue_orphans(tx.session, other_hosts=own_folder)
            submitted = submit_study(tx.session, study, viewer=EVERYONE,
                                     settings=get_api_settings(), scale=scale)
            tx.dispatch_after_commit(submitted.newly_queued_run_ids)
    except GradlabError as exc:
        raise StudyRunError(exc.detail) from None
    return factory, submitted.study.id


@dataclass(frozen=True)
class _Trained:
    """What this invocation's training did: its stop (None: nothing to train), how long it
    took, and the epochs its runs had done before."""

    kept: float
    stop: StopControl | None = None
    elapsed: float | None = None
    epochs_before: int = 0


def _train(factory: sessionmaker[Session], study_id: str, cells: set[str] | None,
           settings: WorkerSettings, limit: TimeLimit | None, console: Console,
           kept: float) -> _Trained:
    from gradlab.cli.study_training import study_plan, train_runs
    from gradlab.worker.stopping import stop_on_signals

    plan = study_plan(factory, study_id)
    chosen = [r for r in plan if cells is None or r.cell in cells]
    queued = [r for r in chosen if r.status == "queued"]
    note = "" if cells is None else f" in {len(cells)} chosen cell(s)"
    console.print(
        f"{len({r.cell for r in plan})} cells, {len(plan)} runs: "
        f"{sum(1 for r in plan if r.status == 'succeeded')} already succeeded, "
        f"{len(queued)} to run{note} (database {settings.database_url})"
    )
    if not queued:
        return _Trained(kept)
    data = _data_source(settings, factory, study_id)
    started = time.perf_counter()
    with stop_on_signals(settings.shutdown_grace_seconds, sigint=True, time_limit=limit,
                         announce=lambda text: console.print(f"[yellow]{text}[/yellow]")) as stop:
        train_runs(factory, settings, data, stop, study_id, chosen, console)
    return _Trained(kept, stop, time.perf_counter() - started,
                    sum(r.epochs_done for r in plan))


def _data_source(settings: WorkerSettings, factory: sessionmaker[Session], study_id: str) -> Any:
    """Loads a data set from the data folder, which holds every data set the study trains
    on: fetched first when missing (``gradlab.core.data.ensure_data``)."""
    from gradlab.core.data import CifarArrays, DataNotFoundError, ensure_data, load_cifar
    from gradlab.core.data_download import DownloadError
    from gradlab.store.studies import get_study, study_spec_of

    with factory() as session:
        study = get_study(session, study_id)
        assert study is not None  # this command submitted it
        spec, scale = study_spec_of(study)
    root = None
    try:
        for dataset in sorted({c.spec.data.dataset for c in expand(spec, scale=scale)}):
            root = ensure_data(settings.data_dir, dataset, download=True, show_progress=True)
    except (DataNotFoundError, DownloadError) as exc:
        raise StudyRunError(str(exc)) from None
    assert root is not None  # a study has at least one cell
    found: Path = root

    def load_data(dataset: str) -> CifarArrays:
        return load_cifar(found, dataset)

    return load_data


def _drop_finished_checkpoints(factory: sessionmaker[Session], folder: StudyFolder,
                               study_id: str) -> None:
    from gradlab.cli.study_folder import drop_finished_checkpoints
    from gradlab.cli.study_training import study_plan

    ids = [r.run_id for r in study_plan(factory, study_id) if r.run_id is not None]
    drop_finished_checkpoints(factory, folder.checkpoint_store(), ids)


def _results(factory: sessionmaker[Session], study_id: str) -> list[CellResult]:
    from gradlab.store.studies import get_study, study_results

    with factory() as session:
        study = get_study(session, study_id)
        assert study is not None  # submitted by this command, never deleted since
        return study_results(session, study)


def _resume_command(file: Path, scale: str, out: Path, device: str, database_url: str | None,
                    pack: bool, time_limit: float | None, cells: list[str] | None) -> str:
    """This invocation's command line, which resumes where it stopped."""
    words = ["gradlab", "study", "run", str(file), "--scale", scale, "--out", str(out)]
    if device != "auto":
        words += ["--device", device]
    if database_url:
        words += ["--database-url", database_url]
    if not pack:
        words.append("--no-pack")
    if time_limit is not None:
        words += ["--time-limit", f"{time_limit:g}"]
    for name in cells or []:
        words += ["--cell", name]
    return shlex.join(words)


def _say_what_is_left(console: Console, factory: sessionmaker[Session], study_id: str,
                      cells: set[str] | None, trained: _Trained, resume: str) -> None:
    """After the report: what of the chosen cells is unfinished and why, what the other cells
    still need, and the command that resumes."""
    from gradlab.cli.study_training import describe_left, study_plan, unfinished_by_cell

    plan = study_plan(factory, study_id)
    left = unfinished_by_cell(plan, cells)
    others = {} if cells is None else unfinished_by_cell(
        [r for r in plan if r.cell not in cells])
    if trained.stop is not None:
        epochs_now = sum(r.epochs_done for r in plan)
        for line in _why_stopped(trained.stop, plan, epochs_now - trained.epochs_before,
                                 trained.kept):
            console.print(f"[yellow]{line}[/yellow]", highlight=False, soft_wrap=True)
    if left:
        console.print(f"Left: {describe_left(left)}.", highlight=False, soft_wrap=True)
    if others:
        console.print(f"Not trained this time (not chosen with --cell): {describe_left(others)}.",
                      highlight=False, soft_wrap=True)
    if left:
        console.print(f"Resume with: {resume}", highlight=False, soft_wrap=True)


def _runs(n: int) -> str:
    return f"{n} run{'' if n == 1 else 's'}"


def _why_stopped(stop: StopControl, plan: list[PlannedRun], epochs_trained: int,
                 kept: float) -> list[str]:
    """Why training ended before the chosen runs finished, in sentences."""
    lines = []
    if stop.requested:
        lines.append(f"Stopped ({stop.reason}): every run in training was handed back at its "
                     "last finished epoch, its checkpoint kept.")
    if stop.cut_short:
        lines.append(f"{_runs(len(stop.cut_short))} stopped mid-epoch: that epoch was "
                     "discarded and is trained again on resume.")
    limit = stop.time_limit
    if limit is None:
        return lines
    if limit.refused and stop.reason != "time limit":
        lines.append("Time limit: a run whose next epoch would not end in time stopped at an "
                     "epoch boundary, its checkpoint written, or was not started.")
    cells = {r.run_id: r.cell for r in plan}
    for cell_name, seconds in {cells[i]: s for i, s in limit.refused.items() if i in cells}.items():
        lines.append(f"{cell_name}: its next epoch (about {seconds:.0f} s) did not fit in the "
                     "time left.")
    if epochs_trained == 0 and limit.refused:
        longest = max(limit.refused.values())
        lines.append(f"Not one epoch fitted: an epoch takes about {longest:.0f} s, and "
                     f"{limit.seconds:.0f} s were left for training (after start-up and the "
                     f"{kept:.0f} s kept for the report): give a larger "
                     "--time-limit.")
    elif epochs_trained == 0 and stop.cut_short:
        lines.append(f"Not one epoch finished in the {limit.seconds:.0f} s left for training "
                     f"(after start-up and the {kept:.0f} s kept for the "
                     "report): give a larger --time-limit.")
    return lines


# --- the report -------------------------------------------------------------------------------


def _report(
    study_name: str,
    description: str,
    scale: str,
    results: list[CellResult],
    out: Path,
    console: Any,
    elapsed: float | None,
) -> None:
    from rich.table import Table

    from gradlab.science.report import build_report, write_report
    from gradlab.science.report.tables import TEXT_HEADER, row_cells_text

    report = build_report(study_name, results, scale=scale, description=description)
    html_path = write_report(report, out)
    for fig in report.figures:
        fig.figure.clear()
    table = Table(title=f"{study_name} ({scale})", show_lines=False)
    longest = max((len(row.name) for row in report.rows), default=4)
    for column in TEXT_HEADER:
        if column == "cell":  # the name is what the findings refer to: never truncate it
            table.add_column(column, justify="left", no_wrap=True, min_width=longest)
        else:
            table.add_column(column, justify="right")
    for row in report.rows:
        table.add_row(*row_cells_text(row))
    console.print(table)
    console.print("[bold]Findings[/bold]")
    if not report.findings:
        console.print("  none")
    for finding in report.findings:
        console.print(
            f"  - [cyan]{finding.kind}[/cyan]: {finding.sentence}", highlight=False, soft_wrap=True
        )
    if elapsed is not None:
        console.print(f"Trained in {elapsed / 60:.1f} min.")
    console.print(
        f"{report.runs_finished}/{len(report.completion)} runs finished. "
        f"Report: {html_path.resolve()}"
    )
