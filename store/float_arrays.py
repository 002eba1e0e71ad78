"""A list of floats as bytes and back: float64, little-endian, no header.

Gradient flow is stored as one row per epoch with one such array per statistic and window (a
value per layer): a row and an index entry per epoch instead of per layer, read back with one
C call. Exact: every float64, NaN and inf included, comes back bit for bit.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence


def pack_floats(values: Sequence[float]) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


def unpack_floats(blob: bytes) -> list[float]:
    if len(blob) % 8:
        raise ValueError(f"{len(blob)} bytes are not a whole number of float64 values")
    return list(struct.unpack(f"<{len(blob) // 8}d", blob))
