"""The `gradlab` command: the top floor, whose local verbs may start core, api and worker.

Each group of verbs lives in its own module, on a Typer of its own (``commands``, each verb
decorated where it is defined); this one app merges them.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="gradlab",
    help="Deep-network optimisation studies with per-layer gradient flow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def main() -> None:
    from gradlab.settings import UnusableSettingError

    _register_commands()
    try:
        app()
    except UnusableSettingError as exc:
        # A GRADLAB_ variable this verb's process kind cannot use: refused before any work.
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise SystemExit(2) from None


def _register_commands() -> None:
    # Imported here so `gradlab --help` stays fast and a module's heavy imports load on use.
    from gradlab.cli import (
        core_commands,
        remote_commands,
        service_commands,
        study_commands,
        token_commands,
    )

    for module in (core_commands, service_commands, study_commands, remote_commands,
                   token_commands):
        app.add_typer(module.commands)
