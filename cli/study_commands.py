"""`gradlab study run FILE --scale smoke|medium|full --out DIR`: a whole study on this machine.

The embedded default, no servers: the study is submitted into a SQLite store (``DIR/gradlab.db``
unless ``--database-url``) exactly as ``POST /studies`` does (existing cells reused), and each
queued run is trained in this process through the worker's own ``execute_run`` (lease, per-epoch
writes of metrics, gradient flow and checkpoint). Running the command again skips finished runs
and resumes unfinished ones from their last checkpoint. At the end (or on Ctrl-C) the report is
read back from the store, written to ``DIR``, and the table, findings and report path printed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from gradlab.science.study import SCALES, StudySpec, expand, load_study
from gradlab.science.study_results import CellResult

study_app = typer.Typer(help="Studies: grids of experiments with one report.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(study_app, name="study")


class StudyRunError(Exception):
    """A problem the user can fix (bad file, missing data); printed without a traceback."""


@study_app.command("run")
def run_command(
    file: Annotated[Path, typer.Argument(help="study spec (YAML or JSON)")],
    out: Annotated[Path, typer.Option("--out", help="folder for the database, figures, report")],
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
) -> None:
    """Run every cell and seed of a study (resuming what a previous call left), then report."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=180)  # piped to a log: keep the table on one line per cell
    url = database_url or _default_database_url(out)
    try:
        study = _load(file, scale)
        out.mkdir(parents=True, exist_ok=True)
        factory, study_id, queued = _submit(study, scale, url)
    except StudyRunError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    started = time.perf_counter()
    elapsed: float | None = None
    try:
        _run_all(factory, study_id, queued, data_dir, device, url, console, pack)
        elapsed = time.perf_counter() - started if queued else None
    except StudyRunError as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted: reporting what has finished; run again to resume[/yellow]"
        )
    _report(
        study.name, study.description, scale, _results(factory, study_id), out, console, elapsed
    )


def _load(file: Path, scale: str) -> StudySpec:
    if scale not in SCALES:
        raise StudyRunError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    try:
        text = file.read_text()
    except OSError as exc:
        raise StudyRunError(f"cannot read study file {file}: {exc.strerror}") from None
    from gradlab.services.errors import GradlabError
    from gradlab.services.studies import expand_within_limits
    from gradlab.settings import get_settings

    settings = get_settings()
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


# --- the store path: submit into SQLite, train through the worker's execute_run ----------------


def _default_database_url(out: Path) -> str:
    return f"sqlite:///{(out / 'gradlab.db').resolve()}"


def _submit(study: StudySpec, scale: str, url: str) -> tuple[Any, str, list[str]]:
    """Migrate the database, submit the study through the service layer (the API's limits,
    cells reused), return the run ids waiting to be trained here."""
    from gradlab.dispatch.dispatchers import EmbeddedDispatcher
    from gradlab.services.errors import GradlabError
    from gradlab.services.studies import submit_study
    from gradlab.services.transaction import transaction
    from gradlab.settings import get_settings
    from gradlab.store.migrate import upgrade
    from gradlab.store.session import make_engine, make_session_factory
    from gradlab.store.users import EVERYONE
    from gradlab.worker.embedded import requeue_orphans

    upgrade(url)
    factory = make_session_factory(make_engine(url))
    settings = get_settings()
    try:
        # This process is the worker: nothing to wake, it trains what is queued once committed.
        with transaction(factory, EmbeddedDispatcher()) as tx:
            # Runs left "running" by a killed earlier call of this command go back to the queue.
            requeue_orphans(tx.session)
            submitted = submit_study(tx.session, study, viewer=EVERYONE, settings=settings,
                                     scale=scale)
            tx.dispatch_after_commit(submitted.newly_queued_run_ids)
    except GradlabError as exc:
        raise StudyRunError(exc.detail) from None
    return factory, submitted.study.id, list(submitted.queued_run_ids)


def _run_all(
    factory: Any,
    study_id: str,
    queued: list[str],
    data_dir: Path | None,
    device: str,
    url: str,
    console: Any,
    pack: bool = True,
) -> None:
    from gradlab.core.data import load_cifar
    from gradlab.science.progress_bar import progress_bar
    from gradlab.settings import Settings
    from gradlab.store.studies import completion, get_study
    from gradlab.worker.runner import execute_run

    with factory() as session:
        matrix = completion(session, get_study(session, study_id))
    entries = [(cell["name"], s) for cell in matrix for s in cell["seeds"]]
    total = sum(s["epochs_planned"] or 0 for _, s in entries)
    console.print(
        f"{len(matrix)} cells, {len(entries)} runs: "
        f"{sum(1 for _, s in entries if s['status'] == 'succeeded')} already succeeded, "
        f"{len(queued)} to run (database {url})"
    )
    if not queued:
        return
    root = _ensure_study_data(data_dir, factory, study_id)
    settings = Settings(database_url=url, data_dir=root, device=device)
    if not pack:
        settings = settings.model_copy(update={"pack_size": 1})

    def load_data(dataset: str) -> Any:
        return load_cifar(root, dataset)

    names = {s["run_id"]: (name, s) for name, s in entries if s["run_id"]}
    with progress_bar(console) as progress:
        overall = progress.add_task("study (epochs)", total=total)
        watcher = _ProgressWatcher(factory, study_id, progress, overall)
        watcher.start()
        try:
            done: dict[str, str | None] = {}  # every run trained so far, packed ones too
            for run_id in queued:
                if run_id in done:  # trained in an earlier run's pack
                    continue
                name, seed = names[run_id][0], names[run_id][1]["seed"]
                watcher.follow(run_id, f"{name} seed {seed}", names[run_id][1]["epochs_planned"])
                trained: dict[str, str | None] = {}
                execute_run(run_id, factory, load_data, device, settings=settings,
                            outcomes=trained)
                watcher.finish(run_id)
                done.update(trained)
                for failed in (r for r, status in trained.items() if status == "failed"):
                    label = names.get(failed, (failed, {"seed": "?"}))
                    console.print(f"[red]{label[0]} seed {label[1]['seed']} failed[/red] "
                                  "(see the report)")
        finally:
            watcher.stop()


def _ensure_study_data(data_dir: Path | None, factory: Any, study_id: str) -> Path:
    """The data folder, holding every data set the study trains on: fetched when missing
    (``gradlab.core.data.ensure_data``)."""
    from gradlab.core.data import DataNotFoundError, ensure_data
    from gradlab.core.data_download import DownloadError
    from gradlab.store.studies import get_study, study_spec_of

    with factory() as session:
        study = get_study(session, study_id)
        assert study is not None  # this command submitted it
        spec, scale = study_spec_of(study)
    root = None
    try:
        for dataset in sorted({c.spec.data.dataset for c in expand(spec, scale=scale)}):
            root = ensure_data(data_dir, dataset, download=True, show_progress=True)
    except (DataNotFoundError, DownloadError) as exc:
        raise StudyRunError(str(exc)) from None
    assert root is not None  # a study has at least one cell
    return root


class _ProgressWatcher(threading.Thread):
    """Reads epochs done from the database twice a second and moves the bars (the training
    itself runs in the main thread, so Ctrl-C reaches it and the run is handed back)."""

    def __init__(self, factory: Any, study_id: str, progress: Any, overall: Any) -> None:
        super().__init__(daemon=True)
        self.factory, self.study_id = factory, study_id
        self.progress, self.overall = progress, overall
        self.tasks: dict[str, Any] = {}
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def follow(self, run_id: str, label: str, epochs: int) -> None:
        with self.lock:
            self.tasks[run_id] = self.progress.add_task(label, total=epochs)
        self.poll()

    def finish(self, run_id: str) -> None:
        self.poll()
        with self.lock:
            task = self.tasks.pop(run_id, None)
        if task is not None:
            self.progress.update(task, visible=False)

    def poll(self) -> None:
        from gradlab.store.studies import epochs_done

        with self.lock:
            following = dict(self.tasks)
        with self.factory() as session:
            total, by_run = epochs_done(session, self.study_id, list(following))
        for run_id, task in following.items():
            self.progress.update(task, completed=by_run.get(run_id, 0))
        self.progress.update(self.overall, completed=total)

    def run(self) -> None:
        while not self.halt.wait(0.5):
            try:
                self.poll()
            except Exception:  # a busy database must not kill the bars' thread
                continue

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=5)
        with contextlib.suppress(Exception):
            self.poll()


def _results(factory: Any, study_id: str) -> list[CellResult]:
    from gradlab.store.studies import get_study, study_results

    with factory() as session:
        return study_results(session, get_study(session, study_id))


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
