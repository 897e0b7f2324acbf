"""deploy/redis/cluster/create-cluster.sh, the Job redis-cluster-create's script, run for
real against six redis-servers started from deploy/redis/cluster/redis.conf: it makes three
masters with a replica each, a rerun changes nothing, bad input fails with one line; and
apigate, configured with the cluster's seeds as deploy/config/production-redis-cluster does,
limits through it."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from auth_fixtures import apigate_cli
from harness import HOST, Gateway, ScriptedUpstream, free_port, gateway_config, wait_until
from k8s import DEPLOY, build_overlay
from redis_nodes import CLUSTER_CONF, RedisNode
from test_metrics import status_handler

SCRIPT = DEPLOY / "redis" / "cluster" / "create-cluster.sh"


def create(nodes: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(SCRIPT)],
        env={**os.environ, "NODES": " ".join(nodes), "REPLICAS": "1", "WAIT_SECS": "60", **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def six_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisNode]]:
    base = tmp_path_factory.mktemp("cluster")
    nodes: list[RedisNode] = []
    try:
        for i in range(6):
            nodes.append(RedisNode(CLUSTER_CONF, base / str(i)))
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def test_the_job_runs_the_script_on_the_statefulsets_nodes() -> None:
    build = build_overlay("production-redis-cluster")
    job = build.get("Job", "redis-cluster-create")["spec"]["template"]["spec"]
    (container,) = job["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    sts = build.get("StatefulSet", "redis-cluster")["spec"]
    assert env["NODES"].split() == [
        f"redis-cluster-{i}.{sts['serviceName']}:6379" for i in range(sts["replicas"])
    ]
    assert env["REPLICAS"] == "1"
    scripts = build.get("ConfigMap", "redis-cluster-scripts")["data"]
    assert scripts["create-cluster.sh"] == SCRIPT.read_text()
    assert container["command"] == ["sh", "/opt/redis-cluster/create-cluster.sh"]
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/opt/redis-cluster"


def test_script_creates_three_masters_with_a_replica_each_once(six_nodes: list[RedisNode]) -> None:
    addresses = [n.address for n in six_nodes]
    out = create(addresses)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "cluster_state:ok on all 6 nodes, 3 of them replicas" in out.stdout
    client = redis.Redis(host=HOST, port=six_nodes[0].port, decode_responses=True)
    nodes = client.execute_command("CLUSTER", "NODES")
    roles = Counter("master" if "master" in line.split()[2] else "slave" for line in str(nodes).splitlines())
    assert roles == {"master": 3, "slave": 3}, nodes
    client.close()

    again = create(addresses)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already knows 6 nodes: the cluster exists, nothing to create" in again.stdout


def test_apigate_limits_through_the_cluster_with_replicas(six_nodes: list[RedisNode], tmp_path: Path) -> None:
    """The rate_limiting section of deploy/config/production-redis-cluster, seeds pointed here."""
    if create([n.address for n in six_nodes]).returncode != 0:
        pytest.fail("the cluster could not be created")
    shipped = yaml.safe_load((DEPLOY / "config" / "production-redis-cluster" / "config.yaml").read_text())
    rl = dict(shipped["rate_limiting"], redis_cluster_nodes=[n.address for n in six_nodes[:3]])
    limit = {"limit": 5, "window_secs": 1_000_000, "algorithm": "token_bucket", "key_type": "route"}
    routes = [
        {"id": "warm", "path": "/warm/*", "upstream_id": "app", "rate_limit": dict(limit, limit=1000)},
        {"id": "limited", "path": "/x/*", "upstream_id": "app", "rate_limit": limit},
    ]
    upstream = ScriptedUpstream(status_handler).start()
    cfg = gateway_config(free_port(), {"app": upstream.url}, routes, workdir=tmp_path)
    cfg["rate_limiting"] = rl
    gw = Gateway(cfg, tmp_path / "gw").start()
    try:
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            # The cluster client's first round trip learns the slots (another route, another key).
            assert wait_until(lambda: c.get("/warm/x").status_code == 200, 10, 0.05)
            statuses = Counter(c.get(f"/x/{i}").status_code for i in range(8))
        assert statuses == {200: 5, 429: 3}, (statuses, gw.stderr())
    finally:
        gw.stop()
        upstream.stop()


def test_script_refuses_too_few_nodes_and_gives_up_on_a_dead_one(six_nodes: list[RedisNode]) -> None:
    out = create([n.address for n in six_nodes[:4]])
    assert out.returncode == 1
    assert out.stderr.strip() == "create-cluster: 4 nodes cannot make 3 masters with 1 replicas each"
    dead = f"{HOST}:{free_port()}"
    out = create([dead], WAIT_SECS="2")
    assert out.returncode == 1
    assert out.stderr.strip() == f"create-cluster: timed out after 2s waiting for {dead} to answer PING"
    out = create([], NODES="")
    assert out.returncode != 0 and "set NODES" in out.stderr


@pytest.mark.xfail(
    strict=True,
    reason="on main, sessions reach only a redis_url (none is set beside redis_cluster_nodes): "
    "`apigate session` refuses and the gateway keeps sessions in memory. The shared Redis client "
    "(docs/ARCHITECTURE.md, apigate.redis) sends them to the cluster; remove this marker when it lands.",
)
def test_sessions_live_in_the_cluster_too(six_nodes: list[RedisNode], tmp_path: Path) -> None:
    if create([n.address for n in six_nodes]).returncode != 0:
        pytest.fail("the cluster could not be created")
    shipped = yaml.safe_load((DEPLOY / "config" / "production-redis-cluster" / "config.yaml").read_text())
    assert "session_store" not in shipped["auth"]  # sessions follow rate limiting's Redis
    upstream = ScriptedUpstream(status_handler).start()
    routes = [{"id": "private", "path": "/private/*", "upstream_id": "app", "auth_required": True}]
    cfg = gateway_config(free_port(), {"app": upstream.url}, routes, workdir=tmp_path)
    cfg["rate_limiting"] = dict(
        shipped["rate_limiting"], redis_cluster_nodes=[n.address for n in six_nodes[:3]]
    )
    cfg["auth"] = {"token_format": "session", "cache": {"ttl_secs": 1}}
    gw = Gateway(cfg, tmp_path / "gw").start()
    try:
        out = apigate_cli(
            "session", "create", "--config", str(gw.config_path), "--sub", "alice", "--ttl", "600"
        )
        assert out.returncode == 0, out.stderr
        token = out.stdout.strip()
        cluster = redis.RedisCluster(host=HOST, port=six_nodes[0].port)
        try:
            assert cluster.exists(f"session:{token}") == 1
        finally:
            cluster.close()
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            auth = {"Authorization": f"Bearer {token}"}
            assert c.get("/private/x", headers=auth).status_code == 200
            out = apigate_cli("session", "revoke", "--config", str(gw.config_path), token)
            assert out.returncode == 0, out.stderr
            assert wait_until(lambda: c.get("/private/x", headers=auth).status_code == 401, 10, 0.05)
    finally:
        gw.stop()
        upstream.stop()
