"""Small statistics shared by the benchmarks."""

from __future__ import annotations


def percentile(values: list[float], q: float, digits: int = 2) -> float | None:
    """Nearest-rank percentile, rounded to `digits`; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return round(ordered[rank - 1], digits)
