"""The policy of the rendered-view cache: what a key holds, when a view is rendered, by whom.

A key is who may see the entry (the owner's id, or everyone's view: an entry is only put after
the viewer was allowed to read the experiment), the view and its parameters normalised to
what changes the picture (an epoch window clamped to the epochs recorded, a sampling cap no
larger than the longest series), and the version of the data shown: each run's id, status,
epochs done and attempt. A run changes its numbers only when it records an epoch, changes
status or restarts (the worker writes an epoch's rows and the run's progress in one
transaction), and a study that adds a seed adds a run: all of these move the version, so a
view is never served stale, finished experiment or not. The version costs one small read of
the runs per request; a hit renders nothing.

A miss is rendered in a worker thread, holding one of the viewer's render slots
(``api/render_limits.py``), so no user can take every thread or the plot lock.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy.orm import Session, sessionmaker

from gradlab.api.auth import ViewerDep
from gradlab.api.deps import RenderLimiterDep, ResponseCacheDep, SessionFactoryDep
from gradlab.api.render_limits import RenderLimiter
from gradlab.api.response_cache import CachedResponse, ResponseCache
from gradlab.services.experiments import get_experiment
from gradlab.store.models import Experiment
from gradlab.store.users import Viewer


class ExperimentView(Protocol):
    """One view of an experiment (metrics, gradient flow, diagnostics)."""

    def cache_key(self, session: Session, experiment: Experiment) -> tuple[Hashable, ...]:
        """The view's name and its parameters, normalised on the data (read with ``session``)."""
        ...

    def render(self, session: Session, experiment: Experiment) -> CachedResponse: ...


def viewer_key(viewer: Viewer) -> str:
    return "*" if viewer.sees_all else f"owner:{viewer.user_id}"


def runs_version(experiment: Experiment) -> tuple[tuple[str, str, int, int], ...]:
    """What every view of an experiment depends on: its runs (a new seed is a new run), their
    statuses, epochs done and attempts."""
    return tuple((r.id, r.status, r.epochs_done, r.attempt) for r in experiment.runs)


def _key(
    session: Session, experiment: Experiment, viewer: Viewer, view: ExperimentView
) -> tuple[Hashable, ...]:
    return (viewer_key(viewer), experiment.id, *view.cache_key(session, experiment),
            runs_version(experiment))


@dataclass(frozen=True)
class Views:
    """What a cached, rendered view needs (one per request, ``ViewsDep``): sessions, the
    response cache, the render slots and the viewer."""

    factory: sessionmaker[Session]
    cache: ResponseCache
    limiter: RenderLimiter
    viewer: Viewer

    async def experiment(self, experiment_id: str, view: ExperimentView) -> Response:
        """The view from the cache, else rendered in a thread under the viewer's render slot."""

        def find(render: bool) -> CachedResponse | None:
            # On a miss, read again: the version may have moved while this request waited for
            # its slot, and another request may have rendered it meanwhile.
            with self.factory() as session:
                experiment = get_experiment(session, experiment_id, viewer=self.viewer)
                key = _key(session, experiment, self.viewer, view)
                entry = self.cache.get(key)
                if entry is None and render:
                    entry = view.render(session, experiment)
                    self.cache.put(key, entry)
                return entry

        entry = await self.cached(find)
        return Response(entry.body, media_type=entry.media_type, headers=dict(entry.headers))

    async def cached(self, find: Callable[[bool], CachedResponse | None]) -> CachedResponse:
        """``find(False)``: the cached entry or None, in a thread. On a miss, ``find(True)``
        renders (and caches) it in a thread, holding one of the viewer's render slots."""
        entry = await run_in_threadpool(find, False)
        if entry is None:
            async with self.limiter.slot(self.viewer.user_id or "*"):
                entry = await run_in_threadpool(find, True)
        if entry is None:
            raise RuntimeError("a view asked to render returned nothing")
        return entry


async def _views(
    factory: SessionFactoryDep, cache: ResponseCacheDep, limiter: RenderLimiterDep,
    viewer: ViewerDep,
) -> Views:
    return Views(factory, cache, limiter, viewer)


ViewsDep = Annotated[Views, Depends(_views)]
