"""A bounded in-memory cache of rendered responses of finished experiments.

Finished runs never change, so once every run of an experiment is terminal, a rendered
gradient-flow or metrics response (JSON, CSV or PNG bytes) is valid forever. Entries are keyed
by experiment id and the full query, and evicted least-recently-used by total size.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from gradlab.api.prometheus_metrics import RESPONSE_CACHE_LOOKUPS


@dataclass(frozen=True)
class CachedResponse:
    body: bytes
    media_type: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RenderedView:
    response: CachedResponse
    # every run it shows had finished when it was read, so it never changes: cacheable
    final: bool


class ResponseCache:
    """Thread-safe LRU of rendered responses, bounded by the bytes it holds."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, CachedResponse] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> CachedResponse | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                RESPONSE_CACHE_LOOKUPS.labels("miss").inc()
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            RESPONSE_CACHE_LOOKUPS.labels("hit").inc()
            return entry

    def put(self, key: Hashable, entry: CachedResponse) -> None:
        size = len(entry.body)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._size -= len(old.body)
            self._entries[key] = entry
            self._size += size
            while self._size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._size -= len(evicted.body)

    def discard_experiment(self, experiment_id: str) -> None:
        """Forget every view of a deleted experiment, whoever it was cached for (keys are
        tuples holding the experiment id: ``(visibility, view, experiment id, ...)``)."""
        with self._lock:
            for key in [k for k in self._entries if isinstance(k, tuple) and experiment_id in k]:
                self._size -= len(self._entries.pop(key).body)

    @property
    def size_bytes(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._entries)
