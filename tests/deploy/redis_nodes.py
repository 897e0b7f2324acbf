"""redis-server started from a config file of deploy/redis, on the loopback."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from harness import HOST, free_port, port_accepts, require_tool, stop_process, wait_until
from k8s import DEPLOY

SINGLE_CONF = DEPLOY / "redis" / "redis.conf"
CLUSTER_CONF = DEPLOY / "redis" / "cluster" / "redis.conf"


class RedisNode:
    """The file as shipped, except where it listens and writes: the loopback and `workdir`
    instead of the pod's /data volume (redis-server changes into `dir` as it reads the line,
    so the line itself is replaced; the rest are command-line overrides)."""

    def __init__(self, conf: Path, workdir: Path) -> None:
        binary = require_tool("redis-server", "/usr/bin/redis-server", "/usr/sbin/redis-server")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = workdir / "redis.log"
        lines = conf.read_text().splitlines()
        assert "dir /data" in lines  # the StatefulSets mount the data volume at /data
        local = workdir / "redis.conf"
        local.write_text(
            "\n".join(f"dir {workdir}" if line == "dir /data" else line for line in lines) + "\n"
        )
        args = [binary, str(local), "--bind", HOST, "--port", str(self.port)]
        if "cluster-enabled yes" in lines:  # a bus port that is free, not port + 10000
            args += ["--cluster-config-file", str(workdir / "nodes.conf"), "--cluster-port", str(free_port())]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        started = wait_until(lambda: self.proc.poll() is not None or port_accepts(self.port), 15)
        if not started or self.proc.poll() is not None:
            self.stop()
            raise AssertionError(f"redis-server did not start with {conf}:\n{self.log.read_text()}")

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 10)
