"""scripts/backup-redis.sh and restore-redis.sh, for real: redis-server, moto's S3, redis-check-rdb.

A live Redis with known data is backed up to S3 and restored into a fresh redis-server,
whose DBSIZE and sampled keys must equal the original's; also with AOF on, through the
`--pod` path (a kubectl stand-in that acts on a real Redis), and every failure mode the
issue names: unreachable Redis, a failed save, a failed upload, a tampered backup.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import HOST, stop_process
from ops_fixtures import FakeKubectl, LiveRedis, MotoS3, moto, ops_cli, run_script, start_redis_on

__all__ = ["moto"]
Completed = subprocess.CompletedProcess[str]
STAMPED = re.compile(r"^redis/redis-backup-\d{8}-\d{6}\.rdb$")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRedis]:
    server = LiveRedis(tmp_path_factory.mktemp("live"), password="s3cret-pass")
    yield server
    server.stop()


def backup_redis(url: str, moto: MotoS3, dest: str, env: dict[str, str] | None = None) -> Completed:
    return run_script(
        "backup-redis.sh", "--redis-url", url, "--dest", dest, "--endpoint-url", moto.url, env=env
    )


def verify_restored(port: int, *args: str) -> Completed:
    return ops_cli("restore", "verify", "--redis-url", f"redis://{HOST}:{port}", *args)


def backup(live: LiveRedis, moto: MotoS3, bucket: str) -> str:
    out = backup_redis(live.url, moto, f"s3://{bucket}/redis/")
    assert out.returncode == 0, out.stderr
    assert not live.password or live.password not in out.stdout + out.stderr
    return out.stdout


def restore(moto: MotoS3, bucket: str, key: str, *where: str, env: dict[str, str] | None = None) -> Completed:
    return run_script(
        "restore-redis.sh", "--source", f"s3://{bucket}/{key}", "--endpoint-url", moto.url, *where, env=env
    )


def backed_up(moto: MotoS3, source: LiveRedis) -> tuple[LiveRedis, str, int]:
    """Back `source` up into a fresh bucket and stop it: (source, bucket, its key count)."""
    try:
        bucket = moto.bucket()
        backup(source, moto, bucket)
        return source, bucket, source.dbsize()
    finally:
        source.stop()


def test_backup_uploads_a_stamped_snapshot_its_checksum_and_latest(live: LiveRedis, moto: MotoS3) -> None:
    bucket = moto.bucket()
    backup(live, moto, bucket)
    keys = moto.keys(bucket)
    stamped = [k for k in keys if STAMPED.match(k)]
    assert len(stamped) == 1, keys
    assert set(keys) == {
        stamped[0],
        stamped[0] + ".sha256",
        "redis/redis-backup-latest.rdb",
        "redis/redis-backup-latest.rdb.sha256",
    }
    data = moto.get(bucket, stamped[0])
    digest = hashlib.sha256(data).hexdigest()
    assert data.startswith(b"REDIS")
    name = stamped[0].rsplit("/", 1)[1]
    assert moto.get(bucket, stamped[0] + ".sha256").decode() == f"{digest}  {name}\n"
    assert moto.get(bucket, "redis/redis-backup-latest.rdb") == data
    head = moto.client().head_object(Bucket=bucket, Key="redis/redis-backup-latest.rdb")
    assert head["Metadata"]["sha256"] == digest
    assert int(head["Metadata"]["keys"]) == live.dbsize()


def test_restore_into_a_fresh_redis_server_gives_the_same_data(
    live: LiveRedis, moto: MotoS3, tmp_path: Path
) -> None:
    bucket = moto.bucket()
    backup(live, moto, bucket)
    data_dir = tmp_path / "restored"
    out = restore(moto, bucket, "redis/redis-backup-latest.rdb", "--data-dir", str(data_dir))
    assert out.returncode == 0, out.stderr
    assert "redis-check-rdb OK" in out.stdout and f"--expect-keys {live.dbsize()}" in out.stdout
    proc, port = start_redis_on(data_dir, "--appendonly", "no")
    try:
        live.assert_same_data(port)
        verify = verify_restored(
            port,
            "--expect-keys",
            str(live.dbsize()),
        )
        assert verify.returncode == 0, verify.stderr
        assert f"keys: {live.dbsize()}" in verify.stdout
    finally:
        stop_process(proc)


def test_restore_with_aof_on_loads_the_snapshot_not_the_old_aof(moto: MotoS3, tmp_path: Path) -> None:
    """Redis with AOF ignores dump.rdb: the old AOF goes aside, a new one is seeded from the backup."""
    source, bucket, _ = backed_up(moto, LiveRedis(tmp_path / "src", aof=True, sessions=100))
    # The target directory belonged to a Redis with AOF and different data.
    stale = LiveRedis(tmp_path / "target", aof=True, sessions=0)
    stale.client().set("stale-key", "from before the restore")
    stale.stop()
    assert (tmp_path / "target" / "appendonlydir").is_dir()
    out = restore(moto, bucket, "redis/redis-backup-latest.rdb", "--data-dir", str(tmp_path / "target"))
    assert out.returncode == 0, out.stderr
    assert "appendonlydir aside" in out.stdout and "seeded" in out.stdout
    assert list((tmp_path / "target").glob("appendonlydir.pre-restore-*"))
    proc, port = start_redis_on(tmp_path / "target", "--appendonly", "yes")
    try:
        source.assert_same_data(port)
        import redis

        assert redis.Redis(host=HOST, port=port).get("stale-key") is None
    finally:
        stop_process(proc)
    # Restarted again, it still has the data (its AOF holds it, not just the seed).
    proc, port = start_redis_on(tmp_path / "target", "--appendonly", "yes")
    try:
        source.assert_same_data(port)
    finally:
        stop_process(proc)


def test_restore_verify_enable_aof_waits_for_the_rewrite(moto: MotoS3, tmp_path: Path) -> None:
    """The issue's manual procedure: start with appendonly no, check DBSIZE, CONFIG SET appendonly yes."""
    source, bucket, n = backed_up(moto, LiveRedis(tmp_path / "src", sessions=50))
    out = restore(
        moto, bucket, "redis/redis-backup-latest.rdb", "--data-dir", str(tmp_path / "t"), "--appendonly", "no"
    )
    assert out.returncode == 0, out.stderr
    proc, port = start_redis_on(tmp_path / "t", "--appendonly", "no")
    try:
        verify = verify_restored(
            port,
            "--expect-keys",
            str(n),
            "--enable-aof",
        )
        assert verify.returncode == 0, verify.stderr
        assert "AOF enabled and rewritten" in verify.stdout
        import redis

        info = redis.Redis(host=HOST, port=port).info("persistence")
        assert info["aof_enabled"] == 1 and info["aof_rewrite_in_progress"] == 0
    finally:
        stop_process(proc)
    proc, port = start_redis_on(tmp_path / "t", "--appendonly", "yes")  # the AOF now holds the data
    try:
        source.assert_same_data(port)
    finally:
        stop_process(proc)


def test_unreachable_redis_fails_with_one_line_and_uploads_nothing(moto: MotoS3) -> None:
    bucket = moto.bucket()
    out = backup_redis(f"redis://:hunter2@{HOST}:1/0", moto, f"s3://{bucket}/redis/")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "cannot reach Redis" in out.stderr and "hunter2" not in out.stderr
    assert moto.keys(bucket) == []


def test_a_failed_save_fails_and_uploads_nothing(moto: MotoS3, tmp_path: Path) -> None:
    """A Redis that refuses to send a snapshot (SYNC and PSYNC renamed away)."""
    server = LiveRedis(
        tmp_path / "nosync",
        sessions=5,
        extra=("--rename-command", "SYNC", "", "--rename-command", "PSYNC", ""),
    )
    try:
        bucket = moto.bucket()
        out = backup_redis(server.url, moto, f"s3://{bucket}/redis/")
        assert out.returncode == 1
        assert out.stderr.startswith("backup-redis: snapshot of") and out.stderr.count("\n") == 1
        assert moto.keys(bucket) == []
    finally:
        server.stop()


def test_a_failed_upload_names_the_object_and_leaves_nothing(live: LiveRedis, moto: MotoS3) -> None:
    out = backup_redis(live.url, moto, "s3://no-such-bucket/redis/")
    assert out.returncode == 1
    assert "upload to s3://no-such-bucket/redis/redis-backup-" in out.stderr and "NoSuchBucket" in out.stderr
    assert out.stderr.count("\n") == 1


def test_a_snapshot_redis_check_rdb_rejects_is_not_uploaded(
    live: LiveRedis, moto: MotoS3, tmp_path: Path
) -> None:
    fake = tmp_path / "redis-check-rdb"
    fake.write_text("#!/bin/sh\necho '--- RDB ERROR DETECTED ---'\nexit 1\n")
    fake.chmod(0o755)
    bucket = moto.bucket()
    out = backup_redis(
        live.url,
        moto,
        f"s3://{bucket}/redis/",
        env={"REDIS_CHECK_RDB": str(fake)},
    )
    assert out.returncode == 1 and "redis-check-rdb rejected" in out.stderr
    assert moto.keys(bucket) == []


def test_restore_refuses_a_tampered_or_corrupt_backup(live: LiveRedis, moto: MotoS3, tmp_path: Path) -> None:
    bucket = moto.bucket()
    backup(live, moto, bucket)
    s3 = moto.client()
    head = s3.head_object(Bucket=bucket, Key="redis/redis-backup-latest.rdb")
    data = moto.get(bucket, "redis/redis-backup-latest.rdb")
    s3.put_object(
        Bucket=bucket,
        Key="redis/tampered.rdb",
        Body=data[:-1] + bytes([data[-1] ^ 0xFF]),
        Metadata=head["Metadata"],
    )
    out = restore(moto, bucket, "redis/tampered.rdb", "--data-dir", str(tmp_path / "a"))
    assert out.returncode == 1 and "checksum mismatch" in out.stderr
    assert not (tmp_path / "a" / "dump.rdb").exists()
    junk = b"REDIS0011 this is not an rdb"
    s3.put_object(
        Bucket=bucket, Key="redis/junk.rdb", Body=junk, Metadata={"sha256": hashlib.sha256(junk).hexdigest()}
    )
    out = restore(moto, bucket, "redis/junk.rdb", "--data-dir", str(tmp_path / "b"))
    assert out.returncode == 1 and "redis-check-rdb rejected" in out.stderr
    assert not (tmp_path / "b" / "dump.rdb").exists()
    out = restore(moto, bucket, "redis/missing.rdb", "--data-dir", str(tmp_path / "c"))
    assert out.returncode == 1 and "download of s3://" in out.stderr and out.stderr.count("\n") == 1


def test_restore_into_a_pod_scales_the_gateway_down_installs_and_scales_back(
    moto: MotoS3, tmp_path: Path
) -> None:
    """--pod through $KUBECTL: the stand-in runs the in-pod steps against a real redis-server."""
    source, bucket, n = backed_up(moto, LiveRedis(tmp_path / "src", sessions=80))
    # "redis-master-0": a Redis with AOF, save points and other data, as in production.
    pod = LiveRedis(tmp_path / "pod", aof=True, sessions=0, extra=("--save", "1 1"))
    pod.client().set("other", "data")
    restart = f"RUN:{' '.join(pod.args())} --daemonize yes --pidfile {tmp_path / 'pod.pid'}"
    kubectl = FakeKubectl(
        tmp_path / "k",
        [
            ("get deployment/api-gateway", "4", 0),
            ("wait --for=delete", "error: no matching resources found", 1),  # already gone: fine
            ("wait --for=condition=ready pod/redis-master-0", restart, 0),
        ],
        redis_port=pod.port,
    )
    try:
        out = restore(
            moto,
            bucket,
            "redis/redis-backup-latest.rdb",
            "--pod",
            "production/redis-master-0",
            env=kubectl.env,
        )
        assert out.returncode == 0, out.stderr + out.stdout
        calls = [" ".join(c) for c in kubectl.calls()]
        order = [
            "-n production get deployment/api-gateway",
            "-n production scale deployment/api-gateway --replicas=0",
            "-n production wait --for=delete pod -l app=api-gateway",
            "-n production cp ",
            "-n production exec redis-master-0 -- sh -c",
            "-n production wait --for=condition=ready pod/redis-master-0",
            "-n production exec redis-master-0 -- redis-cli --raw INFO keyspace",
            "-n production scale deployment/api-gateway --replicas=4",
        ]
        positions = [next(i for i, c in enumerate(calls) if c.startswith(o)) for o in order]
        assert positions == sorted(positions), calls
        assert f"{n} keys" in out.stdout
        source.assert_same_data(pod.port)  # the restarted "pod" (appendonly yes) loaded the backup
        import redis

        assert redis.Redis(host=HOST, port=pod.port).get("other") is None
    finally:
        pid = tmp_path / "pod.pid"
        if pid.exists():
            import os
            import signal

            os.kill(int(pid.read_text()), signal.SIGTERM)
        pod.stop()


def test_pod_restore_failing_midway_says_the_gateway_is_still_at_zero(moto: MotoS3, tmp_path: Path) -> None:
    _, bucket, _ = backed_up(moto, LiveRedis(tmp_path / "src", sessions=5))
    kubectl = FakeKubectl(
        tmp_path / "k",
        [
            ("get deployment/api-gateway", "6", 0),
            ("CONFIG GET dir", "dir\n/data\n", 0),
            (" cp ", "error: pod redis-master-0 not found", 1),
        ],
    )
    out = restore(
        moto, bucket, "redis/redis-backup-latest.rdb", "--pod", "production/redis-master-0", env=kubectl.env
    )
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert "kubectl cp" in out.stderr and "scale deployment/api-gateway --replicas=6" in out.stderr
    assert not any("--replicas=6" in " ".join(c) for c in kubectl.calls())
