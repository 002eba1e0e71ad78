"""What one worker process holds: its database sessions and the device it trains on.

Created lazily in the process that uses them (a prefork child), never inherited across fork:
a pooled connection's socket belongs to the process that opened it.
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from gradlab.core.data import CifarArrays, load_cifar, resolve_data_dir
from gradlab.settings import get_worker_settings
from gradlab.store.session import engine_from_settings, make_session_factory

_factory: sessionmaker[Session] | None = None
_device: str | None = None


def reset(device: str | None = None) -> None:
    """Forget the engine inherited from the parent and set the device this child trains on."""
    global _factory, _device
    if _factory is not None:
        engine = _factory.kw.get("bind")
        if engine is not None:
            engine.dispose(close=False)
    _factory = None
    _device = device


def session_factory() -> sessionmaker[Session]:
    global _factory
    if _factory is None:
        _factory = make_session_factory(engine_from_settings(get_worker_settings()))
    return _factory


def device() -> str:
    """The pinned device of a prefork child; with ``--pool solo`` there is no fork and the
    setting (``auto`` by default) is used as is."""
    return _device or get_worker_settings().device


def load_data(dataset: str) -> CifarArrays:
    return load_cifar(resolve_data_dir(get_worker_settings().data_dir), dataset)
