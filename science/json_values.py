"""Values made JSON-safe. A module of its own so that the API can use it without loading the
report's plotting (matplotlib costs half a second of every API start)."""

from __future__ import annotations

import math
from typing import Any


def json_safe(value: Any) -> Any:
    # JSON has no NaN/inf; null marks a value that could not be computed or plotted.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
