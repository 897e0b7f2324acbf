"""splunk: HTTP Event Collector, batches of concatenated event objects.

Each request body is `{"time":..,"host":..,"source":"apigate","sourcetype":..,"index":..,
"event":{...}}` repeated, with `Authorization: Splunk <token>`. HEC answers
`{"text":..,"code":N}`; the retry rules follow its codes:

- 200 code 0: delivered;
- 500/503 or codes 8, 9 (server busy / internal), 18-20 (unhealthy, ack unavailable):
  retried with backoff, the whole batch;
- 4xx with codes 1-7, 12, 13 (token missing/invalid/disabled, no data, invalid format,
  incorrect index, ...): not retried; counted as dropped (`rejected`) and reported;
- anything else 4xx (e.g. 429) is retried.

With `ack: true` every request carries `X-Splunk-Request-Channel`, HEC returns an
`ackId`, and the batch only counts as delivered once `/services/collector/ack` says it
was indexed; an ack that does not come in time means the batch is sent again.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any
from urllib.parse import urlsplit

import orjson

from apigate.config.schema import SplunkSink as SplunkConfig
from apigate.logs import events
from apigate.logs.httpc import HttpClient, HttpError
from apigate.logs.record import Record
from apigate.logs.sinks.base import Sink, SinkUnavailable

NO_RETRY_CODES = frozenset({1, 2, 3, 4, 5, 6, 7, 12, 13})
RETRY_CODES = frozenset({8, 9, 18, 19, 20})
ACK_WAIT_S = 30.0
ACK_POLL_S = 0.2


class SplunkSink(Sink):
    kind = "splunk"

    def __init__(self, name: str, min_level: int, cfg: SplunkConfig) -> None:
        super().__init__(name, min_level, cfg.batch_size, cfg.flush_interval_secs)
        self.cfg = cfg
        u = urlsplit(cfg.endpoint)
        self.client = HttpClient(f"{u.scheme}://{u.netloc}", cfg.verify_tls)
        self.path = u.path or "/services/collector"
        self.ack_path = self.path.rstrip("/").rsplit("/collector", 1)[0] + "/collector/ack"
        self.headers = {"Authorization": f"Splunk {cfg.token}", "Content-Type": "application/json"}
        if cfg.ack:
            self.headers["X-Splunk-Request-Channel"] = str(uuid.uuid4())
        self.host = socket.gethostname()
        meta: dict[str, Any] = {"host": self.host, "source": "apigate", "sourcetype": cfg.sourcetype}
        if cfg.index:
            meta["index"] = cfg.index
        self.meta = orjson.dumps(meta)[1:-1]  # "host":..,"source":.. without braces

    def body(self, batch: list[Record]) -> bytes:
        meta = self.meta
        return b"".join(b'{"time":%.3f,%s,"event":%s}' % (r.ts, meta, r.json) for r in batch)

    async def send(self, batch: list[Record]) -> list[Record]:
        try:
            resp = await self.client.request("POST", self.path, self.body(batch), self.headers)
        except HttpError as e:
            raise SinkUnavailable(str(e)) from e
        code = -1
        ack_id = None
        try:
            answer = orjson.loads(resp.body) if resp.body else {}
            if isinstance(answer, dict):
                code = int(answer.get("code", -1))
                ack_id = answer.get("ackId")
        except (orjson.JSONDecodeError, ValueError, TypeError):
            answer = {}
        if resp.status == 200 and code in (0, -1):
            if self.cfg.ack and ack_id is not None:
                await self._wait_ack(int(ack_id))
            self.delivered(len(batch))
            return []
        if resp.status in (500, 503) or code in RETRY_CODES:
            raise SinkUnavailable(f"HEC answered {resp.status} code {code}")
        if 400 <= resp.status < 500 and code in NO_RETRY_CODES:
            self.rejected(len(batch))
            events.emit(
                "ERROR",
                "logs",
                "sink_rejected",
                "Splunk HEC rejected log events",
                sink=self.name,
                count=len(batch),
                status=resp.status,
                code=code,
                reason=str(answer.get("text", "")) if isinstance(answer, dict) else "",
            )
            return []
        raise SinkUnavailable(f"HEC answered {resp.status} code {code}")

    async def _wait_ack(self, ack_id: int) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + ACK_WAIT_S
        body = orjson.dumps({"acks": [ack_id]})
        while loop.time() < end:
            try:
                resp = await self.client.request("POST", self.ack_path, body, self.headers)
            except HttpError as e:
                raise SinkUnavailable(str(e)) from e
            if resp.status != 200:
                raise SinkUnavailable(f"HEC ack answered {resp.status}")
            acks = orjson.loads(resp.body).get("acks", {})
            if acks.get(str(ack_id)):
                return
            await asyncio.sleep(ACK_POLL_S)
        raise SinkUnavailable(f"HEC ack {ack_id} not confirmed in {ACK_WAIT_S}s")

    async def close_backend(self) -> None:
        self.client.close()
