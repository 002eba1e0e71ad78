"""Service verbs: ``gradlab serve`` (API + local worker, SQLite, one command), and the
cluster's parts: ``gradlab api``, ``gradlab worker`` (Celery), ``gradlab reaper``,
``gradlab migrate``."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TypeVar

import typer

from gradlab.settings import (
    ApiSettings,
    ServerSettings,
    WorkerSettings,
    clear_cached,
    get_api_settings,
    get_worker_settings,
)

# The verbs this module adds to `gradlab` (cli.py merges every module's).
commands = typer.Typer()

Kind = TypeVar("Kind", bound=ServerSettings)


def _database_url(db: str | None) -> str | None:
    """``--db``: a SQLAlchemy URL, or a path to a SQLite file."""
    if db is None:
        return None
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def settings_with_db(db: str | None, kind: type[Kind]) -> Kind:
    """The settings of ``kind``, with ``--db`` (when given) as the database of this process
    and its children."""
    url = _database_url(db)
    if url is not None:
        os.environ["GRADLAB_DATABASE_URL"] = url  # so every process (and child) agrees
        clear_cached()
    return kind()


def _without_password(url: str) -> str:
    """The URL as logs may show it: these lines end up in container and Kubernetes Job logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _migrate_or_exit(url: str, revision: str = "head") -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from gradlab.store import migrate

    try:
        if revision == "base":
            migrate.downgrade(url, "base")
        else:
            migrate.upgrade(url, revision)
    except (SQLAlchemyError, OSError) as exc:
        typer.secho(f"error: cannot migrate the database {_without_password(url)}: {exc}",
                    fg="red", err=True)
        raise typer.Exit(2) from None


@commands.command("migrate")
def migrate_command(
    db: str | None = typer.Option(
        None, "--db", help="Database URL or SQLite file (default: GRADLAB_DATABASE_URL)."
    ),
    revision: str = typer.Option("head", help="Target revision (`base` empties the database)."),
) -> None:
    """Bring the database schema to a revision (default: the latest)."""
    from gradlab.store import migrate

    settings = settings_with_db(db, ServerSettings)
    _migrate_or_exit(settings.database_url, revision)
    revision_now = migrate.current_revision(settings.database_url)
    typer.echo(f"{_without_password(settings.database_url)}: at {revision_now}")


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def auth_notice(settings: ApiSettings) -> str:
    """One line saying whether requests need a token, printed when a server starts."""
    if settings.auth_required:
        return ("auth: on (GRADLAB_AUTH_REQUIRED=true): every route but /healthz, /readyz and "
                "/metrics needs a bearer token; create one with `gradlab token create --user NAME`")
    return ("auth: off (single-user mode): anyone who reaches this port can read and cancel "
            "every experiment; set GRADLAB_AUTH_REQUIRED=true and create tokens with "
            "`gradlab token create --user NAME` before sharing it")


@commands.command("serve")
def serve_command(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    db: str | None = typer.Option(
        None,
        "--db",
        help="SQLite file or database URL (default: GRADLAB_DATABASE_URL, else ./gradlab.db).",
    ),
) -> None:
    """The whole service on one machine: the API plus a local worker, no broker needed."""
    from gradlab.observability.metrics_folder import prepare_multiprocess_dir

    # Before anything imports prometheus_client: the local worker (another process) then
    # adds its epoch times to the files this API's /metrics reads.
    prepare_multiprocess_dir("serve")
    import uvicorn

    from gradlab.api.app import create_app
    from gradlab.observability.logs import configure_logging
    from gradlab.worker.embedded import LocalWorker

    # The API here, and a worker in the child: each reads its own kind.
    settings = settings_with_db(db, ApiSettings)
    worker_settings = WorkerSettings()
    configure_logging(settings.log_format, settings.log_level)
    if settings.broker_url:
        typer.secho(
            "note: GRADLAB_BROKER_URL is set but `gradlab serve` trains with its local worker; "
            "use `gradlab worker` for Celery.",
            fg="yellow",
            err=True,
        )
        settings = settings.model_copy(update={"broker_url": None})
        worker_settings = worker_settings.model_copy(update={"broker_url": None})
    _migrate_or_exit(settings.database_url)
    worker = LocalWorker(worker_settings)
    worker.start()
    typer.echo(
        f"gradlab: API on http://{host}:{port} (docs at /docs), database "
        f"{settings.database_url}, local worker pid {worker.pid}"
    )
    typer.echo(auth_notice(settings))
    # uvicorn re-raises SIGTERM after its graceful shutdown; as SystemExit (not the default
    # "terminate now") it reaches the finally below, which waits until the local worker has
    # handed its run back.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        uvicorn.run(
            create_app(settings, dispatcher=worker.dispatcher),
            host=host,
            port=port,
            log_config=None,  # the root logger's format (configure_logging) for every line
            access_log=False,  # one line per request comes from the API's own middleware
        )
    finally:
        worker.stop()


def _broker_url_or_exit(settings: ServerSettings, command: str) -> str:
    if not settings.broker_url:
        typer.secho(
            f"error: `gradlab {command}` needs GRADLAB_BROKER_URL (e.g. redis://localhost:6379/0);"
            " `gradlab serve` runs everything on one machine without a broker.",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    return settings.broker_url


@commands.command("api")
def api_command(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    workers: int = typer.Option(1, min=1, max=64, help="API processes."),
) -> None:
    """The API alone, as a container runs it: a database and a broker configured, no worker."""
    from gradlab.observability.metrics_folder import MULTIPROC_ENV, prepare_multiprocess_dir

    if workers > 1 or os.environ.get(MULTIPROC_ENV):
        # Several processes answer /metrics: counters are shared through files, so every
        # scrape sees the sum (see gradlab.observability.prometheus).
        prepare_multiprocess_dir("api")
    import uvicorn

    settings = get_api_settings()
    _broker_url_or_exit(settings, "api")
    typer.echo(auth_notice(settings))
    uvicorn.run(
        "gradlab.api.app:create_service_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,  # each worker process configures its logs (create_service_app)
        access_log=False,
    )


@commands.command("worker")
def worker_command(
    concurrency: int | None = typer.Option(
        None, help="Runs trained at once (default: one per visible GPU, or "
                   "GRADLAB_PROCESSES_PER_GPU per GPU with GRADLAB_GPU_SHARING=processes; "
                   "else 1)."
    ),
    queues: str | None = typer.Option(
        None, help="Comma-separated queues to consume (default: GRADLAB_CELERY_QUEUE)."
    ),
    loglevel: str = typer.Option("info", help="Celery log level."),
) -> None:
    """A Celery training worker against the configured broker and database (one child per
    GPU, or several with GRADLAB_GPU_SHARING=processes). Run `gradlab reaper` once per
    deployment beside the workers."""
    settings = get_worker_settings()
    _broker_url_or_exit(settings, "worker")
    if settings.worker_metrics_port is not None:
        from gradlab.observability.metrics_folder import prepare_multiprocess_dir

        prepare_multiprocess_dir("worker")  # before the tasks' metrics are imported
        from gradlab.observability.prometheus import serve_metrics

        serve_metrics(settings.worker_metrics_port)
    from gradlab.worker import devices
    from gradlab.worker.celery_app import app as celery_app

    try:
        children = devices.worker_concurrency(
            concurrency, per_gpu=devices.children_per_gpu(settings))
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    argv = ["worker", "--pool", "prefork", "--concurrency", str(children)]
    argv += ["--queues", queues or settings.celery_queue, "--loglevel", loglevel]
    argv += ["--hostname", f"worker-{os.getpid()}@%h"]
    sys.exit(celery_app.worker_main(argv))


@commands.command("reaper")
def reaper_command(
    schedule: Path | None = typer.Option(
        None, hidden=True,
        help="Ignored: the reaper keeps its own timer (it used Celery beat's file before).",
    ),
    loglevel: str = typer.Option("info", help="Log level."),
) -> None:
    """The lost-run reaper (run exactly one per deployment): a pass every half lease (at
    least 5 s) that requeues runs whose worker was lost and resends queued runs whose message
    the broker lost. Its timer is its own, so it works on while the broker is down or empty."""
    del schedule  # still accepted, so a deployment written for the beat-based reaper starts
    from gradlab.observability.logs import configure_logging

    settings = get_worker_settings()
    _broker_url_or_exit(settings, "reaper")
    configure_logging(settings.log_format, loglevel.upper())
    from gradlab.worker.reaper_service import serve_reaper

    serve_reaper(settings)


