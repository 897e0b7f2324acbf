"""Outage: every remote sink is down for 60 s while 50,000 events are produced, and the
gateway is restarted once in between. After recovery every event must have arrived in
Elasticsearch, Splunk and CloudWatch, none twice in Elasticsearch (by `_id`); the test
prints losses and duplicates per sink (CloudWatch has no id to deduplicate on: a re-sent
batch would show as duplicates, reported, not asserted).

The three sinks run in parallel in this one test (the machine is small). Events are the
access events of 404 answers (always logged), each request carrying its own X-Request-ID,
so every event is identified by its correlation_id; the file sink, never down, is the
reference.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness import HOST, GatewayFactory, wait_until

from logservers.base import free_port
from logservers.elasticsearch import ElasticsearchServer
from logservers.splunk import SplunkServer

TOTAL = 50_000
BEFORE_OUTAGE = 5_000
BEFORE_RESTART = 20_000
OUTAGE_S = 60.0
GROUP = "/aws/api-gateway/outage"

pytestmark = pytest.mark.slow


def send_requests(port: int, ids: list[str], conns: int = 8, depth: int = 64) -> None:
    """Pipelined GETs of an unrouted path (404, always logged), one X-Request-ID each."""

    def worker(chunk: list[str]) -> None:
        with socket.create_connection((HOST, port), timeout=30) as s:
            for i in range(0, len(chunk), depth):
                part = chunk[i : i + depth]
                s.sendall(
                    b"".join(
                        b"GET /outage HTTP/1.1\r\nHost: x\r\nUser-Agent: outage\r\nX-Request-ID: %s\r\n\r\n"
                        % rid.encode()
                        for rid in part
                    )
                )
                buf = b""
                while buf.count(b"HTTP/1.1 404") < len(part) or not buf.endswith(b"}"):
                    data = s.recv(65536)
                    if not data:
                        raise AssertionError("gateway closed the connection")
                    buf += data

    chunks = [ids[i::conns] for i in range(conns)]
    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def servers() -> Iterator[tuple[ElasticsearchServer, SplunkServer, Any]]:
    from moto.server import ThreadedMotoServer

    es = ElasticsearchServer().start()
    hec = SplunkServer("outage-token").start()
    moto = ThreadedMotoServer(ip_address=HOST, port=free_port(), verbose=False)
    moto.start()
    try:
        yield es, hec, moto
    finally:
        es.stop()
        hec.stop()
        moto.stop()


def cloudwatch_ids(url: str) -> list[str]:
    import boto3

    client = boto3.client("logs", region_name="us-east-1", endpoint_url=url)
    out: list[str] = []
    for stream in client.describe_log_streams(logGroupName=GROUP)["logStreams"]:
        kw: dict[str, Any] = {
            "logGroupName": GROUP,
            "logStreamName": stream["logStreamName"],
            "startFromHead": True,
        }
        while True:
            resp = client.get_log_events(**kw)
            for e in resp["events"]:
                ev = orjson.loads(e["message"])
                if ev.get("event_type") == "request_completed":
                    out.append(ev["correlation_id"])
            if not resp["events"] or resp["nextForwardToken"] == kw.get("nextToken"):
                break
            kw["nextToken"] = resp["nextForwardToken"]
    return out


@pytest.mark.timeout(600)  # 60 s outage + delivery; a loaded CI machine needs headroom
def test_outage_with_restart_loses_nothing(
    gateway: GatewayFactory,
    servers: tuple[ElasticsearchServer, SplunkServer, Any],
    aws_env: None,
    tmp_path: Path,
) -> None:
    es, hec, moto = servers
    moto_url = f"http://{HOST}:{moto._port}"
    log = tmp_path / "reference.log"
    sinks = [
        {"type": "file", "file": {"path": str(log), "max_size_mb": 1000}},
        {
            "type": "elasticsearch",
            "elasticsearch": {"urls": [es.url], "batch_size": 500, "flush_interval_secs": 1},
        },
        {
            "type": "splunk",
            "splunk": {
                "endpoint": hec.url + "/services/collector",
                "token": "outage-token",
                "batch_size": 500,
                "flush_interval_secs": 1,
            },
        },
        {
            "type": "cloudwatch",
            "cloudwatch": {
                "region": "us-east-1",
                "log_group": GROUP,
                "batch_size": 2000,
                "flush_interval_secs": 1,
                "endpoint_url": moto_url,
            },
        },
    ]
    gw = gateway(
        {"up": "http://127.0.0.1:9"},
        [{"id": "never", "path": "/never", "upstream_id": "up"}],
        logging={"level": "INFO", "spool_dir": str(tmp_path / "spool"), "sinks": sinks},
    )
    ids = [f"outage-{i:06d}" for i in range(TOTAL)]
    t0 = time.monotonic()
    send_requests(gw.port, ids[:BEFORE_OUTAGE])
    assert wait_until(lambda: len(es.docs) >= BEFORE_OUTAGE, 30, 0.2), len(es.docs)

    # CloudWatch too is up (group and stream created, first batches in) before it goes down.
    def cw_count() -> int:
        from botocore.exceptions import ClientError

        try:
            return len(cloudwatch_ids(moto_url))
        except ClientError:  # the sink has not created the group yet
            return 0

    assert wait_until(lambda: cw_count() >= BEFORE_OUTAGE, 60, 0.5), cw_count()

    es.down()
    hec.down()
    moto.stop()
    down_at = time.monotonic()
    send_requests(gw.port, ids[BEFORE_OUTAGE:BEFORE_RESTART])
    assert gw.stop() == 0  # SIGTERM while the sinks are down: queues go to the spools
    gw.start()
    send_requests(gw.port, ids[BEFORE_RESTART:])
    produced_at = time.monotonic()
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
    es.up()
    hec.up()
    moto = type(moto)(ip_address=HOST, port=moto._port, verbose=False)  # same port, same moto state
    moto.start()
    up_at = time.monotonic()
    try:

        def es_ids() -> list[str]:
            return [
                d["correlation_id"]
                for d in list(es.docs.values())
                if d.get("event_type") == "request_completed"
            ]

        def hec_ids() -> list[str]:
            return [
                e["event"]["correlation_id"]
                for e in list(hec.events)
                if e["event"].get("event_type") == "request_completed"
            ]

        expected = set(ids)
        wait_until(lambda: set(es_ids()) >= expected and set(hec_ids()) >= expected, 150, 1.0)
        delivered_at = time.monotonic()
        # moto serves PutLogEvents from this test process: reading every event back is
        # heavy and competes with it for the GIL, so look only once the spools are drained,
        # and not too often.
        cw: list[str] = []
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            if not any((tmp_path / "spool").rglob("*.spool")):
                cw = cloudwatch_ids(moto_url)
                if set(cw) >= expected:
                    break
            time.sleep(5)
        assert gw.stop() == 0
        reference = [
            e["correlation_id"]
            for e in map(orjson.loads, log.read_bytes().splitlines())
            if e.get("event_type") == "request_completed"
        ]
        results = {
            "file": reference,
            "elasticsearch": es_ids(),
            "splunk": hec_ids(),
            "cloudwatch": cw,
        }
        print(
            f"\noutage test: {TOTAL} events, sinks down {up_at - down_at:.0f} s, restart once;"
            f" produced in {produced_at - t0:.1f} s,"
            f" all delivered {delivered_at - up_at:.1f} s after recovery"
        )
        print(f"{'sink':<14}{'received':>10}{'lost':>8}{'duplicates':>12}")
        report = {}
        for sink, got in results.items():
            dups = sum(n - 1 for n in Counter(got).values() if n > 1)
            lost = len(expected - set(got))
            report[sink] = (lost, dups)
            print(f"{sink:<14}{len(got):>10}{lost:>8}{dups:>12}")
        print(f"elasticsearch re-sends answered 409: {es.conflicts}; overwrites: {es.overwrites}")
        # No sink loses anything. (CloudWatch lost whole batches here once: the restarted
        # gateway produced faster than its sink's first open() took, and the full queue
        # dropped its oldest although a spool was there; test_logs_sinks.py has the
        # focused regression test.)
        assert all(lost == 0 for lost, _ in report.values()), report
        assert report["elasticsearch"][1] == 0 and es.overwrites == 0
        assert report["file"][1] == 0
        assert es.protocol_errors == [] and hec.protocol_errors == []
        assert not any((tmp_path / "spool").rglob("*.spool")), "spools drained"
    finally:
        moto.stop()
