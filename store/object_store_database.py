"""Checkpoint objects as rows of ``checkpoint_objects``: the embedded default (SQLite or the
same PostgreSQL), fine on one machine, no other service to run.

Each put is its own short transaction, committed before the epoch's transaction that
references it, like the other stores: the reference never points at bytes that are not there.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from gradlab.store.base import utcnow
from gradlab.store.models import CheckpointObject
from gradlab.store.object_store import ObjectMissingError, check_key
from gradlab.store.session import session_scope


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}%"


class DatabaseObjectStore:
    kind = "database"

    def __init__(self, factory: sessionmaker[Session]):
        self._factory = factory

    def put(self, key: str, data: bytes) -> None:
        row = {"key": check_key(key), "data": data, "created_at": utcnow()}
        with session_scope(self._factory) as session:
            insert = (
                postgresql.insert
                if session.get_bind().dialect.name == "postgresql"
                else sqlite.insert
            )
            stmt = insert(CheckpointObject).values(**row)
            stmt = stmt.on_conflict_do_update(
                index_elements=["key"],
                set_={"data": stmt.excluded.data, "created_at": stmt.excluded.created_at},
            )
            session.execute(stmt)

    def get(self, key: str) -> bytes:
        with self._factory() as session:
            data = session.scalar(select(CheckpointObject.data).where(CheckpointObject.key == key))
        if data is None:
            raise ObjectMissingError(f"no object {key!r} in the database")
        return bytes(data)

    def keys(self, prefix: str) -> list[str]:
        with self._factory() as session:
            return list(
                session.scalars(
                    select(CheckpointObject.key)
                    .where(CheckpointObject.key.like(_like_prefix(prefix), escape="\\"))
                    .order_by(CheckpointObject.key)
                )
            )

    def delete(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        with session_scope(self._factory) as session:
            session.execute(delete(CheckpointObject).where(CheckpointObject.key.in_(list(keys))))

    def delete_prefix(self, prefix: str) -> None:
        with session_scope(self._factory) as session:
            session.execute(
                delete(CheckpointObject).where(
                    CheckpointObject.key.like(_like_prefix(prefix), escape="\\")
                )
            )
