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
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Any

from apigate.telemetry import names
from apigate.telemetry.diagnosis import Series, quantile
from apigate.telemetry.diagnosis import parse_metrics as parse

SCRAPE_TIMEOUT_S = 5.0
PROCESS_START = "process_start_time_seconds"
Samples = Series


class ScrapeError(RuntimeError):
    pass


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


def _versions(samples: Samples) -> list[str]:
    return sorted({dict(lb).get("version", "") for (n, lb) in samples if n == names.APIGATE_BUILD_INFO})


def server_view(url: str, before: Samples, after: Samples) -> dict[str, Any]:
    """The server-side figures of the run, for the report's `server_view` section."""
    reasons = []
    for key, old in before.items():
        if key[0].endswith("_total") and after.get(key, old) < old:
            reasons.append(f"{key[0]} went down ({old:g} -> {after[key]:g})")
            break
    start0, start1 = before.get((PROCESS_START, ())), after.get((PROCESS_START, ()))
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
