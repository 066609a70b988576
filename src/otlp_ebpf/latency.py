"""Percentiles from the kernel's log2 latency slots (slot i holds [2**i, 2**(i+1)) ns)."""

from __future__ import annotations

from collections.abc import Sequence


def slot_bounds(slots: int) -> list[int]:
    """Explicit-bucket bounds that reproduce the slots exactly. Latencies are whole
    nanoseconds, so slot i = [2**i, 2**(i+1)) holds 2**i .. 2**(i+1)-1, which is the OTLP bucket
    (bounds[i-1], bounds[i]] with bounds[i] = 2**(i+1) - 1. The overflow bucket stays empty."""
    return [(1 << (i + 1)) - 1 for i in range(slots)]


def percentile_ns(hist: Sequence[int], q: float, lo: int, hi: int) -> int:
    """Estimate percentile `q` by interpolating inside the slot that holds it, clamped to
    the exact minimum and maximum the kernel kept."""
    total = sum(hist)
    if total == 0:
        return 0
    rank = q * total
    seen = 0
    for slot, n in enumerate(hist):
        if n and seen + n >= rank:
            start = 0 if slot == 0 else 1 << slot
            width = (1 << (slot + 1)) - start
            value = start + width * ((rank - seen) / n)
            return int(min(max(value, lo), hi or value))
        seen += n
    return hi
