"""`--metrics URL`: the gateway's own view of a run, from two scrapes of its /metrics.

Before the first request and after the last one the coordinator reads the Prometheus
text; the difference gives the requests the gateway counted, its 5xx answers and the
p99 of `http_request_duration_seconds` over the run (interpolated inside the bucket as
`histogram_quantile` does). A counter that went down, a changed
`process_start_time_seconds` or a changed `apigate_build_info` version means the process
restarted during the run: the guide's "no pod restarts" criterion.
"""

from __future__ import annotations

import math
import re
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Any

from apigate.telemetry import names

SCRAPE_TIMEOUT_S = 5.0
PROCESS_START = "process_start_time_seconds"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class ScrapeError(RuntimeError):
    pass


def parse(text: str) -> Samples:
    out: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = value
    return out


def scrape(url: str) -> Samples:
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as resp:
            return parse(resp.read().decode("utf-8", errors="replace"))
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ScrapeError(f"cannot scrape {url}: {reason}") from None


def _total(samples: Samples, name: str, status_prefix: str = "") -> float:
    total = 0.0
    for (n, labels), v in samples.items():
        if n == name and (not status_prefix or dict(labels).get("status", "").startswith(status_prefix)):
            total += v
    return total


def _buckets(samples: Samples) -> dict[float, float]:
    out: dict[float, float] = defaultdict(float)
    for (n, labels), v in samples.items():
        if n == names.HTTP_REQUEST_DURATION_SECONDS + "_bucket":
            le = dict(labels).get("le", "")
            out[math.inf if le == "+Inf" else float(le)] += v
    return out


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets {upper bound: count}."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if math.isinf(b):
                return prev_bound
            return prev_bound + (b - prev_bound) * (rank - prev_count) / max(c - prev_count, 1e-12)
        prev_bound, prev_count = b, c
    return prev_bound


def _versions(samples: Samples) -> list[str]:
    return sorted({dict(lb).get("version", "") for (n, lb) in samples if n == names.APIGATE_BUILD_INFO})


def server_view(url: str, before: Samples, after: Samples) -> dict[str, Any]:
    """The server-side figures of the run, for the report's `server_view` section."""
    reasons = []
    for key, old in before.items():
        if key[0].endswith("_total") and after.get(key, old) < old:
            reasons.append(f"{key[0]} went down ({old:g} -> {after[key]:g})")
            break
    start0, start1 = before.get((PROCESS_START, frozenset())), after.get((PROCESS_START, frozenset()))
    if start0 is not None and start1 is not None and start0 != start1:
        reasons.append(f"{PROCESS_START} changed ({start0:g} -> {start1:g})")
    v0, v1 = _versions(before), _versions(after)
    if v0 != v1:
        reasons.append(f"{names.APIGATE_BUILD_INFO} changed ({v0} -> {v1})")
    b0, b1 = _buckets(before), _buckets(after)
    delta = {le: b1.get(le, 0.0) - b0.get(le, 0.0) for le in b1}
    p99 = quantile(0.99, delta)
    return {
        "url": url,
        "requests": round(
            _total(after, names.HTTP_REQUESTS_TOTAL) - _total(before, names.HTTP_REQUESTS_TOTAL)
        ),
        "errors_5xx": round(
            _total(after, names.HTTP_REQUESTS_TOTAL, "5") - _total(before, names.HTTP_REQUESTS_TOTAL, "5")
        ),
        "p99_ms": None if p99 is None else round(p99 * 1000, 3),
        "build_versions": v1,
        "process_start_time_seconds": start1,
        "restarted": bool(reasons),
        "restart_evidence": reasons,
    }
