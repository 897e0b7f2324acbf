"""deploy/redis/redis.conf (and the cluster's) load in a real redis-server, with the
guide's §4.2.1 persistence in force."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from harness import HOST, free_port, require_tool, wait_until
from redis_nodes import CLUSTER_CONF, SINGLE_CONF, RedisNode

CONFS = {"single": SINGLE_CONF, "cluster": CLUSTER_CONF}


@pytest.fixture(params=sorted(CONFS))
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, redis.Redis]]:
    node = RedisNode(CONFS[request.param], tmp_path)
    client = redis.Redis(host=HOST, port=node.port, decode_responses=True)
    try:
        yield request.param, client
    finally:
        client.close()
        node.stop()


def test_redis_conf_loads_with_the_guides_persistence(server: tuple[str, redis.Redis]) -> None:
    kind, client = server
    assert client.config_get("save") == {"save": "900 1 300 10 60 10000"}
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert client.info("cluster")["cluster_enabled"] == (1 if kind == "cluster" else 0)
    if kind == "single":  # a lone cluster node serves no slot until `--cluster create`
        client.set("k", "v")
        client.bgsave()
        assert wait_until(lambda: client.info("persistence")["rdb_bgsave_in_progress"] == 0, 30, 0.05)
        assert client.info("persistence")["rdb_last_bgsave_status"] == "ok"
    assert client.info("persistence")["aof_enabled"] == 1


def test_redis_conf_rejects_the_guides_end_of_line_comments(tmp_path: Path) -> None:
    """Why deploy/redis/redis.conf writes §4.2.1's comments on their own lines."""
    binary = require_tool("redis-server", "/usr/bin/redis-server", "/usr/sbin/redis-server")
    conf = tmp_path / "guide.conf"
    conf.write_text("save 900 1      # Save if 1 key changed in 15 minutes\n")
    out = subprocess.run(
        [binary, str(conf), "--port", str(free_port()), "--bind", HOST, "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0 and "save" in (out.stdout + out.stderr).lower()
