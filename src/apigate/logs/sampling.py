"""Which access events are logged (guide §1.6).

Errors (4xx, 5xx) and authentication failures always; health checks only with
`log_health_checks: true`; other 2xx/3xx with probability `sampling_rate`. The decision
comes first in the access filter, so a sampled-out request costs one comparison and one
random number, not a dict.
"""

from __future__ import annotations

import random

HEALTH_PREFIX = "/health"


class Sampler:
    def __init__(self, rate: float, log_health_checks: bool) -> None:
        self.rate = rate
        self.log_health_checks = log_health_checks
        self._random = random.random

    def is_health_check(self, path: str) -> bool:
        return path.startswith(HEALTH_PREFIX) and (len(path) == 7 or path[7] == "/")

    def keep(self, status: int, path: str, auth_failed: bool = False) -> bool:
        if status >= 400 or auth_failed:
            return True
        if not self.log_health_checks and self.is_health_check(path):
            return False
        rate = self.rate
        return rate >= 1.0 or (rate > 0.0 and self._random() < rate)
