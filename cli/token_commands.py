"""`gradlab token create|list|revoke`: bearer tokens for the API, on the server's database.

Run where the database is reachable (``GRADLAB_DATABASE_URL`` or ``--db``), by whoever
administers the server. A token is printed once and stored only as its SHA-256.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

# The verbs this module adds to `gradlab` (cli.py merges every module's).
commands = typer.Typer()

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from gradlab.store.users import TokenInfo

token_app = typer.Typer(help="Bearer tokens for the API (GRADLAB_AUTH_REQUIRED=true).",
                        no_args_is_help=True)
commands.add_typer(token_app, name="token")
T = TypeVar("T")
DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL or SQLite file (default: GRADLAB_DATABASE_URL)."),
]
TokenArgument = Annotated[
    str, typer.Argument(help="token id, or the first characters shown by `gradlab token list`")
]


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def _in_transaction(db: str | None, work: Callable[..., T]) -> T:
    """Run ``work(session)`` in one transaction on the configured database."""
    from sqlalchemy.exc import SQLAlchemyError

    from gradlab.cli.service_commands import settings_with_db
    from gradlab.settings import ServerSettings
    from gradlab.store.session import make_engine, make_session_factory, session_scope

    url = settings_with_db(db, ServerSettings).database_url
    engine = make_engine(url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            return work(session)
    except SQLAlchemyError as exc:
        raise _fail(f"cannot use the database ({type(exc).__name__}); is it reachable and "
                    "migrated (`gradlab migrate`)?") from None
    finally:
        engine.dispose()


def _change_tokens(db: str | None, token: str,
                   change: Callable[[Session, str], list[TokenInfo]]) -> list[TokenInfo]:
    """``change(session, token)`` on the tokens ``token`` names (an id, or a prefix shown by
    `gradlab token list`) in one transaction; naming none is an error."""
    changed = _in_transaction(db, lambda session: change(session, token))
    if not changed:
        raise _fail(f"no token with id or prefix {token!r} (see `gradlab token list`)")
    return changed


@token_app.command("create")
def create_command(
    user: Annotated[str, typer.Option("--user", help="the user the token acts as (created "
                                                     "when new)")],
    admin: Annotated[bool, typer.Option("--admin", help="this token (only this one: the "
                                        "user's other tokens are unchanged) sees everyone's "
                                        "experiments and studies")] = False,
    db: DbOption = None,
) -> None:
    """Create a token and print it once (it is stored only hashed)."""
    from gradlab.science.bounds import text_problem
    from gradlab.store.users import create_token

    problem = text_problem(user)
    if not user.strip() or len(user) > 200 or problem:
        raise _fail(f"--user must be 1 to 200 characters{'; it ' + problem if problem else ''}")
    issued = _in_transaction(db, lambda session: create_token(session, user, admin=admin))
    role = "admin" if issued.is_admin else "user"
    typer.echo(issued.token)
    typer.secho(f"token {issued.token_id} for {role} {issued.user_name!r}: shown once, store "
                "it now; send it as `Authorization: Bearer <token>`", err=True)


@token_app.command("list")
def list_command(db: DbOption = None) -> None:
    """Every token: id, the first characters, user, role (admin is per token), created,
    revoked."""
    from gradlab.store.users import list_tokens

    for info in _in_transaction(db, list_tokens):
        role = "admin" if info.is_admin else "user"
        revoked = f"revoked {info.revoked_at:%Y-%m-%d %H:%M}" if info.revoked_at else "active"
        typer.echo(f"{info.token_id}  {info.prefix}...  {info.user_name} ({role})  "
                   f"created {info.created_at:%Y-%m-%d %H:%M}  {revoked}")


@token_app.command("revoke")
def revoke_command(
    token: TokenArgument,
    db: DbOption = None,
) -> None:
    """Revoke a token: requests with it answer 401 from now on."""
    from gradlab.store.users import revoke_token

    for info in _change_tokens(db, token, revoke_token):
        typer.echo(f"revoked {info.token_id} ({info.prefix}..., {info.user_name})")


@token_app.command("revoke-admin")
def revoke_admin_command(
    token: TokenArgument,
    db: DbOption = None,
) -> None:
    """Take the admin grant from a token: it stays valid, seeing only its user's own work (open
    event streams on others' work end within GRADLAB_EVENTS_AUTH_RECHECK_SECONDS)."""
    from gradlab.store.users import revoke_admin

    for info in _change_tokens(db, token, revoke_admin):
        typer.echo(f"{info.token_id} ({info.prefix}..., {info.user_name}) is no longer admin")
