"""elasticsearch: `_bulk` NDJSON to the first healthy of `urls`.

- Each event is a `create` action with `_id` = the event's id (pipeline.py), so a retry
  of an event that did arrive is answered 409 and counted as delivered: retries, restarts
  and spool replays never index an event twice.
- The index name is the strftime pattern applied to the event's UTC timestamp.
- A 200 response with `errors: true` is read item by item: 2xx and 409 are delivered,
  429 and 5xx items are retried on their own (after a backoff), other 4xx (mapping
  errors) are counted as dropped (`rejected`) and reported in one `sink_rejected` event.
- A 429 or 5xx for the whole request, or no answer, is retried with capped exponential
  backoff (sinks/base.py); on a connection failure the next URL is tried.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson

from apigate.config.schema import ElasticsearchSink as ElasticsearchConfig
from apigate.logs import events
from apigate.logs.httpc import HttpClient, HttpError
from apigate.logs.record import Record
from apigate.logs.sinks.base import Sink, SinkUnavailable


class ElasticsearchSink(Sink):
    kind = "elasticsearch"

    def __init__(self, name: str, min_level: int, cfg: ElasticsearchConfig) -> None:
        super().__init__(name, min_level, cfg.batch_size, cfg.flush_interval_secs)
        self.cfg = cfg
        self.clients = [HttpClient(u, cfg.verify_tls) for u in cfg.urls]
        self.current = 0
        self.headers = {"Content-Type": "application/x-ndjson"}
        if cfg.api_key:
            self.headers["Authorization"] = "ApiKey " + cfg.api_key
        elif cfg.username is not None:
            token = base64.b64encode(f"{cfg.username}:{cfg.password or ''}".encode()).decode()
            self.headers["Authorization"] = "Basic " + token
        self._index_cache: dict[int, str] = {}

    def index_for(self, ts: float) -> str:
        day = int(ts // 3600)  # patterns finer than an hour are not cached exactly; see below
        name = self._index_cache.get(day)
        if name is None or "%M" in self.cfg.index or "%S" in self.cfg.index:
            name = time.strftime(self.cfg.index, time.gmtime(ts))
            if len(self._index_cache) > 64:
                self._index_cache.clear()
            self._index_cache[day] = name
        return name

    def body(self, batch: list[Record]) -> bytes:
        out = []
        for r in batch:
            action = {"create": {"_index": self.index_for(r.ts), "_id": r.eid}}
            out.append(orjson.dumps(action))
            out.append(r.json)
        out.append(b"")
        return b"\n".join(out)

    async def send(self, batch: list[Record]) -> list[Record]:
        body = self.body(batch)
        resp = None
        last: Exception | None = None
        for i in range(len(self.clients)):
            client = self.clients[(self.current + i) % len(self.clients)]
            try:
                resp = await client.request("POST", "/_bulk", body, self.headers)
            except HttpError as e:
                last = e
                continue
            self.current = (self.current + i) % len(self.clients)
            break
        if resp is None:
            raise SinkUnavailable(str(last))
        if resp.status == 429 or resp.status >= 500:
            raise SinkUnavailable(f"_bulk answered {resp.status}")
        if resp.status != 200:
            # 400/401/403 for the whole request: a configuration problem, kept for later.
            raise SinkUnavailable(f"_bulk answered {resp.status}: {resp.body[:200]!r}")
        result: dict[str, Any] = orjson.loads(resp.body)
        if not result.get("errors"):
            self.delivered(len(batch))
            return []
        items = result.get("items", [])
        again: list[Record] = []
        rejected: list[str] = []
        ok = 0
        for rec, item in zip(batch, items, strict=False):
            info: dict[str, Any] = next(iter(item.values()), {}) if isinstance(item, dict) else {}
            status = int(info.get("status", 500))
            if 200 <= status < 300 or status == 409:
                ok += 1
            elif status == 429 or status >= 500:
                again.append(rec)
            else:
                rejected.append(str(info.get("error", {}).get("type", status)))
        again.extend(batch[len(items) :])  # items missing from the answer: send again
        self.delivered(ok)
        if rejected:
            self.rejected(len(rejected))
            events.emit(
                "ERROR",
                "logs",
                "sink_rejected",
                "Elasticsearch rejected log events",
                sink=self.name,
                count=len(rejected),
                reason=rejected[0],
            )
        return again

    async def close_backend(self) -> None:
        for c in self.clients:
            c.close()
