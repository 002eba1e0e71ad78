"""A bounded in-memory cache of rendered views (JSON, CSV, PNG bytes), least recently used
evicted first by the bytes it holds (cachetools' ``LRUCache`` sized by body length).

What a key holds is the caller's policy (``api/view_cache.py``): who may see the entry, the
view and its normalised parameters, and the version of the data it shows.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass

from cachetools import LRUCache

from gradlab.api.prometheus_metrics import RESPONSE_CACHE_LOOKUPS


@dataclass(frozen=True)
class CachedResponse:
    body: bytes
    media_type: str
    headers: tuple[tuple[str, str], ...] = ()


def _size(entry: CachedResponse) -> int:
    return len(entry.body)


class ResponseCache:
    """Thread-safe LRU of rendered responses, bounded by the bytes it holds."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._entries: LRUCache[Hashable, CachedResponse] = LRUCache(max_bytes, getsizeof=_size)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> CachedResponse | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
            else:
                self.hits += 1
        RESPONSE_CACHE_LOOKUPS.labels("miss" if entry is None else "hit").inc()
        return entry

    def put(self, key: Hashable, entry: CachedResponse) -> None:
        if _size(entry) > self.max_bytes:
            return  # larger than the whole cache: never kept
        with self._lock:
            self._entries[key] = entry

    def discard_experiment(self, experiment_id: str) -> None:
        """Forget every view of a deleted experiment, whoever it was cached for (keys are
        tuples holding the experiment id)."""
        with self._lock:
            for key in [k for k in self._entries if isinstance(k, tuple) and experiment_id in k]:
                del self._entries[key]

    @property
    def size_bytes(self) -> int:
        return int(self._entries.currsize)

    def __len__(self) -> int:
        return len(self._entries)
