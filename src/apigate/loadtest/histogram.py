"""HDR histograms of latencies in microseconds (the `hdrhistogram` package).

One shape for every histogram of a run, so that the workers' histograms, shipped to the
coordinator in HdrHistogram's compressed encoding, merge by adding counts: the merged
percentiles are exactly those of one histogram fed every sample (3 significant digits,
1 us to 1 h).
"""

from __future__ import annotations

from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_DIGITS = 3
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))


def new() -> Any:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_many(hist: Any, values_us: list[int]) -> None:
    """Record a batch of microsecond values, about 0.4 us each.

    `HdrHistogram.record_value` costs ~2 us per value in Python; a worker at 10k req/s
    records two values per request, and recording them all at once every second stalled
    its loop for ~15 ms, which showed in its own p99. So the request path only appends to
    a list, the worker flushes it every 0.1 s, and this computes the counts index inline:
    the formula of hdrh's `_counts_index_for` (bucket from the bit length, then the
    sub-bucket), checked against `record_value` by tests/unit/test_loadtest_report.py.
    """
    if not values_us:
        return
    low, high = min(values_us), max(values_us)
    if low < LOWEST_US or high > HIGHEST_US:
        values_us = [LOWEST_US if v < LOWEST_US else HIGHEST_US if v > HIGHEST_US else v for v in values_us]
        low, high = max(low, LOWEST_US), min(high, HIGHEST_US)
    counts = hist.counts
    mask = hist.sub_bucket_mask
    unit = hist.unit_magnitude
    half_mag = hist.sub_bucket_half_count_magnitude
    base = unit + half_mag + 1
    half = hist.sub_bucket_half_count
    for v in values_us:
        bucket = (v | mask).bit_length() - base
        counts[((bucket + 1) << half_mag) + (v >> (bucket + unit)) - half] += 1
    hist.total_count += len(values_us)
    hist.min_value = min(hist.min_value, low)
    hist.max_value = max(hist.max_value, high)


def encode(hist: Any) -> bytes:
    return b"" if hist.get_total_count() == 0 else bytes(hist.encode())


def add_encoded(hist: Any, data: bytes) -> None:
    if data:
        hist.decode_and_add(data)


def percentile_ms(hist: Any, pct: float) -> float:
    return round(hist.get_value_at_percentile(pct) / 1000, 3) if hist.get_total_count() else 0.0


def summary_ms(hist: Any) -> dict[str, float]:
    """p50, p90, p99, p999, max and mean in milliseconds (0 for an empty histogram)."""
    out = {name: percentile_ms(hist, pct) for name, pct in PERCENTILES}
    empty = hist.get_total_count() == 0
    out["max"] = 0.0 if empty else round(hist.get_max_value() / 1000, 3)
    out["mean"] = 0.0 if empty else round(hist.get_mean_value() / 1000, 3)
    return out
