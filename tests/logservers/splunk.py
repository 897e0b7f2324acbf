"""A strict Splunk HTTP Event Collector (`/services/collector[/event]`, `/services/collector/ack`).

- `Authorization: Splunk <token>`: missing → 401 code 2, wrong → 403 code 4.
- The body is one or more concatenated JSON objects, each with an `event`; `time` if
  present must be a number. No data → 400 code 5; unparsable → 400 code 6 with
  `invalid-event-number`; an object without `event` → 400 code 12; an `index` other than
  the allowed ones → 400 code 7 (incorrect index). Nothing of a refused request is kept.
- Indexer acknowledgement when `ack_enabled`: requests must carry
  `X-Splunk-Request-Channel` (else 400 code 10), get an `ackId`, and
  `/services/collector/ack` answers whether each id is indexed (after `ack_delay` polls).
- Fault injection: `busy` requests answered 503 code 9 (server busy).
"""

from __future__ import annotations

import json
from typing import Any

from logservers.base import Reply, ThreadedServer, json_reply


class SplunkServer(ThreadedServer):
    def __init__(
        self,
        token: str,
        port: int | None = None,
        ack_enabled: bool = False,
        indexes: tuple[str, ...] = ("main",),
    ) -> None:
        super().__init__(port)
        self.token = token
        self.ack_enabled = ack_enabled
        self.indexes = indexes
        self.events: list[dict[str, Any]] = []
        self.busy = 0
        self.ack_delay = 1
        self._acks: dict[int, int] = {}  # ackId -> polls left before it is indexed
        self._pending: dict[int, list[dict[str, Any]]] = {}
        self._next_ack = 0

    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        auth = headers.get("authorization")
        if auth is None:
            return json_reply(401, {"text": "Token is required", "code": 2})
        if auth != f"Splunk {self.token}":
            return json_reply(403, {"text": "Invalid token", "code": 4})
        if method != "POST":
            return json_reply(400, {"text": "Invalid request", "code": 6})
        if path == "/services/collector/ack":
            return self._ack(body)
        if path not in ("/services/collector", "/services/collector/event"):
            return json_reply(404, {"text": "The requested URL was not found on this server.", "code": 404})
        if self.busy > 0:
            self.busy -= 1
            return json_reply(503, {"text": "Server is busy", "code": 9})
        channel = headers.get("x-splunk-request-channel")
        if self.ack_enabled and not channel:
            return json_reply(400, {"text": "Data channel is missing", "code": 10})
        text = body.decode()
        if not text.strip():
            return json_reply(400, {"text": "No data", "code": 5})
        decoder = json.JSONDecoder()
        pos, n = 0, 0
        got: list[dict[str, Any]] = []
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                break
            try:
                obj, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                self.protocol_errors.append(f"invalid data at event {n}")
                return json_reply(400, {"text": "Invalid data format", "code": 6, "invalid-event-number": n})
            if not isinstance(obj, dict) or "event" not in obj:
                self.protocol_errors.append(f"event field missing at {n}")
                return json_reply(
                    400, {"text": "Event field is required", "code": 12, "invalid-event-number": n}
                )
            if "time" in obj and not isinstance(obj["time"], int | float):
                return json_reply(400, {"text": "Invalid data format", "code": 6, "invalid-event-number": n})
            if "index" in obj and obj["index"] not in self.indexes:
                return json_reply(400, {"text": "Incorrect index", "code": 7, "invalid-event-number": n})
            got.append(obj)
            n += 1
        if self.ack_enabled:
            with self.lock:
                ack_id = self._next_ack
                self._next_ack += 1
                self._acks[ack_id] = self.ack_delay
                self._pending[ack_id] = got
            return json_reply(200, {"text": "Success", "code": 0, "ackId": ack_id})
        with self.lock:
            self.events.extend(got)
        return json_reply(200, {"text": "Success", "code": 0})

    def _ack(self, body: bytes) -> Reply:
        if not self.ack_enabled:
            return json_reply(400, {"text": "ACK is disabled", "code": 14})
        try:
            ids = json.loads(body)["acks"]
        except (ValueError, KeyError, TypeError):
            return json_reply(400, {"text": "Invalid data format", "code": 6})
        out: dict[str, bool] = {}
        for i in ids:
            left = self._acks.get(i)
            if left is None:
                out[str(i)] = False
            elif left <= 0:
                out[str(i)] = True
                with self.lock:
                    self.events.extend(self._pending.pop(i, []))
            else:
                self._acks[i] = left - 1
                out[str(i)] = False
        return json_reply(200, {"acks": out})
