"""cloudwatch: PutLogEvents through botocore (credentials from the standard AWS chain).

The group and the stream are created on first use (ResourceAlreadyExistsException is
success). A batch is cut to PutLogEvents' limits: at most 10,000 events and 1,048,576
bytes counting each message's UTF-8 size + 26, events in chronological order, and a span
of at most 24 hours. `rejectedLogEventsInfo` (too old, too new, expired) and InvalidParameterException are
counted as dropped (`rejected`); ThrottlingException, ServiceUnavailable and network errors are
retried with backoff; a stream deleted meanwhile is created again.

botocore is synchronous, so each call runs in a worker thread; nothing waits on the loop.
`{instance_id}` in the stream name is `APIGATE_INSTANCE_ID` when set (e.g. from the EC2
metadata or the pod name in the manifest), else the host name: no metadata call at start.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from apigate.config.schema import CloudWatchSink as CloudWatchConfig
from apigate.logs.record import Record
from apigate.logs.sinks.base import Sink, SinkUnavailable

MAX_EVENTS = 10_000
MAX_BYTES = 1_048_576
EVENT_OVERHEAD = 26
MAX_SPAN_MS = 24 * 3600 * 1000
MAX_MESSAGE_BYTES = 256 * 1024 - EVENT_OVERHEAD  # a single event's limit (256 KiB with overhead)


def split_batches(records: list[Record]) -> list[list[tuple[int, str]]]:
    """Chronological PutLogEvents batches within the count, size and 24 h limits."""
    events = sorted(((int(r.ts * 1000), r.json.decode()) for r in records), key=lambda e: e[0])
    batches: list[list[tuple[int, str]]] = []
    cur: list[tuple[int, str]] = []
    size = 0
    for ts, msg in events:
        b = len(msg.encode())
        if b > MAX_MESSAGE_BYTES:
            msg = msg.encode()[:MAX_MESSAGE_BYTES].decode(errors="ignore")
            b = len(msg.encode())
        need = b + EVENT_OVERHEAD
        if cur and (len(cur) >= MAX_EVENTS or size + need > MAX_BYTES or ts - cur[0][0] > MAX_SPAN_MS):
            batches.append(cur)
            cur, size = [], 0
        cur.append((ts, msg))
        size += need
    if cur:
        batches.append(cur)
    return batches


def stream_name(template: str, instance_id: str | None = None) -> str:
    host = socket.gethostname()
    return template.format(instance_id=instance_id or host, hostname=host, pid=os.getpid())


class CloudWatchSink(Sink):
    kind = "cloudwatch"

    def __init__(self, name: str, min_level: int, cfg: CloudWatchConfig, worker: int | None = None) -> None:
        super().__init__(name, min_level, cfg.batch_size, cfg.flush_interval_secs)
        self.cfg = cfg
        self.group = cfg.log_group
        template = cfg.log_stream if worker is None else cfg.log_stream + f"-w{worker}"
        self.stream = stream_name(template, os.environ.get("APIGATE_INSTANCE_ID"))
        self.client: Any = None
        self.ready = False

    async def open(self) -> None:
        if self.client is None:
            self.client = await asyncio.to_thread(self._make_client)
        if not self.ready:
            await asyncio.to_thread(self._create)
            self.ready = True

    def _make_client(self) -> Any:
        import botocore.config
        import botocore.session

        session = botocore.session.get_session()
        conf = botocore.config.Config(
            retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=15
        )
        return session.create_client(
            "logs", region_name=self.cfg.region, endpoint_url=self.cfg.endpoint_url, config=conf
        )

    def _create(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for call, kwargs in (
                (self.client.create_log_group, {"logGroupName": self.group}),
                (self.client.create_log_stream, {"logGroupName": self.group, "logStreamName": self.stream}),
            ):
                try:
                    call(**kwargs)
                except ClientError as e:
                    if e.response.get("Error", {}).get("Code") != "ResourceAlreadyExistsException":
                        raise
        except (ClientError, BotoCoreError) as e:
            raise SinkUnavailable(f"cannot create {self.group}/{self.stream}: {e}") from e

    async def send(self, batch: list[Record]) -> list[Record]:
        await self.open()
        rejected = await asyncio.to_thread(self._put, batch)
        self.rejected(rejected)
        self.delivered(len(batch) - rejected)
        return []

    def _put(self, batch: list[Record]) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        rejected = 0
        for events in split_batches(batch):
            params = {
                "logGroupName": self.group,
                "logStreamName": self.stream,
                "logEvents": [{"timestamp": ts, "message": m} for ts, m in events],
            }
            try:
                resp = self.client.put_log_events(**params)
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code")
                if code == "DataAlreadyAcceptedException":
                    continue  # a re-send of a batch CloudWatch already has: delivered
                if code == "InvalidParameterException":
                    # Refused for good (retrying would block the sink forever): dropped, counted.
                    rejected += len(events)
                    continue
                if code == "ResourceNotFoundException":
                    self.ready = False
                raise SinkUnavailable(f"PutLogEvents: {code}") from e
            except BotoCoreError as e:
                raise SinkUnavailable(f"PutLogEvents: {e}") from e
            info = resp.get("rejectedLogEventsInfo") or {}
            rejected += rejected_count(info, len(events))
        return rejected


def rejected_count(info: dict[str, int], n: int) -> int:
    """Events PutLogEvents refused, from its index ranges (too new / too old / expired)."""
    bad: set[int] = set()
    if "tooNewLogEventStartIndex" in info:
        bad.update(range(info["tooNewLogEventStartIndex"], n))
    if "tooOldLogEventEndIndex" in info:
        bad.update(range(0, info["tooOldLogEventEndIndex"] + 1))
    if "expiredLogEventEndIndex" in info:
        bad.update(range(0, info["expiredLogEventEndIndex"] + 1))
    return len(bad)
