"""The docs name the events the Redis stores log through the shared client."""

from __future__ import annotations

from pathlib import Path

import pytest

from apigate.auth import sessions
from apigate.ratelimit import redis as ratelimit_redis
from apigate.redis.client import ClientEvents

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("events", [ratelimit_redis.EVENTS, sessions.EVENTS], ids=["ratelimit", "sessions"])
def test_store_events_are_documented(events: ClientEvents) -> None:
    logging_doc = (DOCS / "LOGGING.md").read_text()
    for name in (events.down, events.up, events.error):
        assert f"`{name}`" in logging_doc, name
    if events is ratelimit_redis.EVENTS:
        rate_doc = (DOCS / "RATE_LIMITING.md").read_text()
        assert all(f"`{n}`" in rate_doc for n in (events.down, events.up, events.error))
