"""The API process's own Prometheus metrics (``gradlab_`` names, prometheus-client).

Counters and histograms, never gauges: in multiprocess mode (several uvicorn workers, see
``gradlab.observability.prometheus``) each process adds to files that a scrape sums, which is
exact for these two kinds. What is a level rather than a count (runs by state, queue depth)
is read from the database at scrape time instead (``api/database_gauges.py``).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# Latency buckets from a cached view (~1 ms) to a large report rendered on a busy machine.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HTTP_REQUEST_SECONDS = Histogram(
    "gradlab_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template (never the raw path), method and status.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
DISPATCH_FAILURES = Counter(
    "gradlab_dispatch_failures",
    "Runs committed but not handed to the queue (they stay queued for the reaper).",
)
RESPONSE_CACHE_LOOKUPS = Counter(
    "gradlab_response_cache_lookups",
    "Rendered-view cache lookups, by result (hit or miss).",
    ["result"],
)
EVENT_STREAMS_OPENED = Counter(
    "gradlab_event_streams_opened",
    "Server-sent event streams opened, by kind (experiment or study).",
    ["kind"],
)
EVENT_STREAMS_CLOSED = Counter(
    "gradlab_event_streams_closed",
    "Server-sent event streams closed (open streams = opened - closed).",
    ["kind"],
)
EVENTS_SENT = Counter(
    "gradlab_events_sent",
    "Server-sent events written to clients, by event type.",
    ["event"],
)
CHANGE_FEED_POLLS = Counter(
    "gradlab_change_feed_polls",
    "Reads of 'runs changed since' by this process's shared change feed (one per poll, "
    "whatever the number of open streams).",
)
