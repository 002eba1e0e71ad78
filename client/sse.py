"""Server-sent events read from lines of text (the WHATWG event-stream format)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from gradlab.client.models import Event


def parse_events(lines: Iterable[str]) -> Iterator[Event]:
    """Events from the stream's lines; comments (heartbeats) and ``retry:`` are skipped."""
    event, last_id = "message", None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                payload = json.loads("\n".join(data))
                if not isinstance(payload, dict):
                    payload = {"value": payload}
                yield Event(id=last_id, event=event, data=payload)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            last_id = value
