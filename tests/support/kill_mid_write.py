"""A worker that trains one run and SIGKILLs itself in the middle of writing one epoch's
checkpoint bytes, inside the real object store's write:

- folder: the bytes are in the hidden partial file, fsynced, not yet renamed into place;
- database: the INSERT of the bytes is sent, its transaction not committed;
- S3: half of the PUT's body is on the wire.

    python -m tests.support.kill_mid_write RUN_ID EPOCH

Everything else comes from GRADLAB_* variables (database, checkpoint store, data, device).
Exits 3 if it was not killed (the epoch was never written).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from gradlab.core.data import load_cifar, resolve_data_dir
from gradlab.settings import get_worker_settings
from gradlab.store.checkpoint_store import CheckpointStore, open_checkpoint_store
from gradlab.store.session import engine_from_settings, make_session_factory
from gradlab.worker.runner import execute_run


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_inside_the_write(kind: str, size: int) -> None:
    """Patch the step of the store's write that comes after the bytes left this process."""
    if kind == "filesystem":
        os.replace = lambda *_: _die()  # type: ignore[assignment]
    elif kind == "database":
        from sqlalchemy.orm import Session

        Session.commit = lambda _self: _die()  # type: ignore[method-assign]
    elif kind == "s3":
        from botocore.awsrequest import AWSConnection

        send: Callable[[Any, bytes], Any] = AWSConnection.send
        sent = 0

        def send_half_the_body(self: Any, data: bytes) -> Any:
            nonlocal sent
            if sent + len(data) < size // 2:
                sent += len(data)
                return send(self, data)
            send(self, data[: size // 2 - sent])
            _die()

        AWSConnection.send = send_half_the_body  # type: ignore[method-assign]
    else:
        raise ValueError(kind)


def arm(store: CheckpointStore, epoch: int) -> None:
    objects = store.objects
    put = objects.put

    def put_or_die(key: str, data: bytes) -> None:
        if key.rpartition("/")[2].startswith(f"{epoch:06d}-"):
            _kill_inside_the_write(objects.kind, len(data))
        put(key, data)

    objects.put = put_or_die  # type: ignore[method-assign]


def main(run_id: str, epoch: int) -> int:
    settings = get_worker_settings()
    factory = make_session_factory(engine_from_settings(settings))
    store = open_checkpoint_store(settings, factory)
    arm(store, epoch)
    root = resolve_data_dir(settings.data_dir)
    execute_run(run_id, factory, lambda dataset: load_cifar(root, dataset), settings.device,
                settings=settings, checkpoints=store)
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
