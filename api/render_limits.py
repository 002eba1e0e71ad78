"""Fair use of rendering: each user renders at most ``concurrency`` views at once (a cache
miss of a metrics, gradient-flow (PNG above all), diagnostics or report view), and may have at
most ``backlog`` more waiting; beyond that the request is answered 429 with Retry-After.

Waiting happens on the event loop, never in a worker thread, so however many renders one user
asks for, they hold at most ``concurrency`` of the server's threads and the plot lock is
shared among users in turn, not taken by whoever sends the most requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from gradlab.services.errors import TooManyRequestsError


@dataclass
class _UserRenders:
    slots: asyncio.Semaphore
    waiting: int = 0
    running: int = 0


class RenderLimiter:
    def __init__(self, concurrency: int, backlog: int) -> None:
        self.concurrency = concurrency
        self.backlog = backlog
        self._users: dict[str, _UserRenders] = {}

    def in_flight(self, user: str) -> int:
        state = self._users.get(user)
        return 0 if state is None else state.waiting + state.running

    @asynccontextmanager
    async def slot(self, user: str) -> AsyncIterator[None]:
        """Hold one of ``user``'s render slots for the block (wait for one if needed)."""
        state = self._users.get(user)
        if state is None:
            state = self._users[user] = _UserRenders(asyncio.Semaphore(self.concurrency))
        if state.waiting + state.running >= self.concurrency + self.backlog:
            raise TooManyRequestsError(
                f"{state.running} renders of yours are running and {state.waiting} waiting, "
                f"the most allowed per user (GRADLAB_RENDER_CONCURRENCY_PER_USER="
                f"{self.concurrency}, GRADLAB_RENDER_BACKLOG_PER_USER={self.backlog}): retry "
                "when one has finished"
            )
        state.waiting += 1
        try:
            await state.slots.acquire()
        finally:
            state.waiting -= 1
        state.running += 1
        try:
            yield
        finally:
            state.running -= 1
            state.slots.release()
            if state.waiting + state.running == 0:
                self._users.pop(user, None)  # an idle user costs no memory
