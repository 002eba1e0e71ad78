"""Users, their bearer tokens (kept only as SHA-256), and who may see what.

A ``Viewer`` is who asks: a user sees what they own, a request with an admin token sees
everything (admin is a grant of one token, revocable, never of the user), and with auth
off (the embedded single-user default) the one ``EVERYONE`` viewer sees everything and owns
what it creates as NULL. Repositories filter with :func:`visible_to`, so another user's
resource is simply not found.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import false, func, or_, select, text, true, update
from sqlalchemy.orm import Session, selectinload

from gradlab.science.records import TERMINAL_RUN_STATUSES
from gradlab.store.base import new_id, utcnow
from gradlab.store.models import ApiToken, Experiment, Run, User

TOKEN_PREFIX = "glt_"
SHOWN_PREFIX_LENGTH = 12


@dataclass(frozen=True)
class Viewer:
    """Who is asking. ``user_id`` owns what they create (None with auth off); ``token_id`` is
    the token the request came with (None with auth off), so an open stream can ask again
    whether it still stands."""

    user_id: str | None
    sees_all: bool
    name: str | None = None
    token_id: str | None = None


EVERYONE = Viewer(user_id=None, sees_all=True, name=None)


def visible_to(owner_column: Any, viewer: Viewer) -> Any:
    """The WHERE clause that keeps only what ``viewer`` may see."""
    return true() if viewer.sees_all else owner_column == viewer.user_id


def owned_by(owner_column: Any, owner_id: str | None) -> Any:
    """The WHERE clause for resources of exactly this owner (NULL: made with auth off)."""
    return owner_column.is_(None) if owner_id is None else owner_column == owner_id


@dataclass(frozen=True)
class IssuedToken:
    token: str  # shown once
    token_id: str
    user_name: str
    is_admin: bool


@dataclass(frozen=True)
class TokenInfo:
    token_id: str
    prefix: str
    user_name: str
    is_admin: bool
    created_at: datetime
    revoked_at: datetime | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def create_token(session: Session, user_name: str, *, admin: bool = False) -> IssuedToken:
    """A new token for ``user_name`` (created if new); ``admin`` grants this token, and only
    this one, the right to see everyone's work."""
    return _add_token(session, user_name, TOKEN_PREFIX + secrets.token_urlsafe(32), admin)


def ensure_token(session: Session, user_name: str, token: str, *, admin: bool = False) -> bool:
    """Register a token the operator chose (``GRADLAB_ADMIN_TOKEN``, from a Kubernetes Secret)
    unless it is registered already; True when it was added."""
    known = select(ApiToken.id).where(ApiToken.token_hash == hash_token(token))
    if session.scalar(known) is not None:
        return False
    _add_token(session, user_name, token, admin)
    return True


def _add_token(session: Session, user_name: str, token: str, admin: bool) -> IssuedToken:
    user = session.scalars(select(User).where(User.name == user_name)).one_or_none()
    if user is None:
        user = User(id=new_id(), name=user_name, created_at=utcnow())
        session.add(user)
    row = ApiToken(
        id=new_id(),
        user_id=user.id,
        token_hash=hash_token(token),
        prefix=token[:SHOWN_PREFIX_LENGTH],
        created_at=utcnow(),
        is_admin=admin,
    )
    session.add(row)
    session.flush()
    return IssuedToken(token, row.id, user.name, row.is_admin)


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(row.id, row.prefix, row.user.name, row.is_admin, row.created_at,
                     row.revoked_at)


def _with_user() -> Any:
    return select(ApiToken).options(selectinload(ApiToken.user))


def list_tokens(session: Session) -> list[TokenInfo]:
    rows = session.scalars(
        _with_user().join(User, User.id == ApiToken.user_id)
        .order_by(User.name, ApiToken.created_at)
    )
    return [_info(row) for row in rows]


def _matching(session: Session, token_id_or_prefix: str) -> list[ApiToken]:
    return list(session.scalars(
        _with_user().where(
            or_(ApiToken.id == token_id_or_prefix, ApiToken.prefix == token_id_or_prefix)
        )
    ))


def revoke_token(session: Session, token_id_or_prefix: str) -> list[TokenInfo]:
    """Revoke the token with this id, or every token starting with this shown prefix."""
    rows = _matching(session, token_id_or_prefix)
    now = utcnow()
    for row in rows:
        if row.revoked_at is None:
            row.revoked_at = now
    session.flush()
    return [_info(row) for row in rows]


def revoke_admin(session: Session, token_id_or_prefix: str) -> list[TokenInfo]:
    """Take the admin grant from the token with this id (or every token with this shown
    prefix); the token itself stays valid, as a plain user's."""
    rows = _matching(session, token_id_or_prefix)
    for row in rows:
        row.is_admin = False
    session.flush()
    return [_info(row) for row in rows]


def _viewer(session: Session, condition: Any) -> Viewer | None:
    row = session.execute(
        select(User.id, User.name, ApiToken.is_admin, ApiToken.id)
        .join(ApiToken, ApiToken.user_id == User.id)
        .where(condition, ApiToken.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    return Viewer(user_id=row[0], sees_all=bool(row[2]), name=row[1], token_id=row[3])


def viewer_for_token(session: Session, token: str) -> Viewer | None:
    """The viewer a bearer token stands for; None when unknown or revoked."""
    return _viewer(session, ApiToken.token_hash == hash_token(token))


def viewer_for_token_id(session: Session, token_id: str) -> Viewer | None:
    """The viewer the token with this id stands for now; None once it is revoked (an open
    event stream asks this again every few seconds)."""
    return _viewer(session, ApiToken.id == token_id)


def lock_submissions(session: Session, owner_id: str | None) -> None:
    """Serialise one owner's submissions until the transaction ends, so two at once cannot
    both pass a limit they read before writing. Call it first in the transaction.

    PostgreSQL: an advisory lock per owner. SQLite: a write that changes nothing, so the
    transaction holds the database's single write lock (waiting on ``busy_timeout``) before
    it reads what the limits count."""
    if session.get_bind().dialect.name == "postgresql":
        key = f"gradlab-submit:{owner_id or ''}"
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})
    else:
        session.execute(update(User).where(false()).values(name=User.name))


def active_runs(session: Session, owner_id: str | None) -> int:
    """Queued plus running runs of this owner's experiments (flushed rows included)."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Run)
            .join(Experiment, Experiment.id == Run.experiment_id)
            .where(owned_by(Experiment.owner_id, owner_id))
            .where(Run.status.not_in(TERMINAL_RUN_STATUSES))
        )
        or 0
    )
