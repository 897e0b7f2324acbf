"""scripts/backup-config.sh and prune-backups.sh against moto's S3 and a kubectl stand-in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from ops_fixtures import FakeKubectl, MotoS3, moto, run_script

__all__ = ["moto"]

CONFIGMAP = """apiVersion: v1
kind: ConfigMap
metadata:
  name: api-gateway-config
  namespace: production
  resourceVersion: "123"
  uid: 0f0e
  creationTimestamp: "2026-01-01T00:00:00Z"
  managedFields: [{manager: kubectl}]
data:
  config.yaml: |
    server: {port: 8080}
"""
SECRET = """apiVersion: v1
kind: Secret
metadata: {name: api-gateway-secrets, namespace: production}
type: Opaque
data:
  JWT_SECRET: c3VwZXItc2VjcmV0LXZhbHVl
  REDIS_PASSWORD: cmVkaXMtcGFzcw==
"""
SERVICE = """apiVersion: v1
kind: Service
metadata: {name: api-gateway, namespace: production}
spec: {clusterIP: 10.0.0.1, ports: [{port: 80, targetPort: 8080}], selector: {app: api-gateway}}
status: {loadBalancer: {}}
"""


def kubectl(tmp_path: Path, **overrides: tuple[str, int]) -> FakeKubectl:
    replies = [
        ("get configmap/api-gateway-config", CONFIGMAP, 0),
        ("get secret/api-gateway-secrets", SECRET, 0),
        ("get service/api-gateway ", SERVICE, 0),
    ]
    for needle, (out, code) in overrides.items():
        replies.insert(0, (needle.replace("_", " "), out, code))
    return FakeKubectl(tmp_path / "k", replies)


def config_backup(
    moto: MotoS3, bucket: str, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    dest = f"s3://{bucket}/config/"
    return run_script("backup-config.sh", "--dest", dest, "--endpoint-url", moto.url, *args, env=env)


def test_config_backup_uploads_clean_objects_and_encrypted_secrets(moto: MotoS3, tmp_path: Path) -> None:
    k = kubectl(tmp_path)
    bucket = moto.bucket()
    key = "correct horse battery staple"
    out = run_script(
        "backup-config.sh",
        "--namespace",
        "production",
        "--dest",
        f"s3://{bucket}/api-gateway/config/",
        "--endpoint-url",
        moto.url,
        env={**k.env, "BACKUP_ENCRYPTION_KEY": key},
    )
    assert out.returncode == 0, out.stderr
    keys = moto.keys(bucket)
    stamp = keys[0].split("/")[2]
    names = {k.rsplit("/", 1)[1] for k in keys}
    assert names == {
        "configmap-api-gateway-config.yaml",
        "service-api-gateway.yaml",
        "secrets.yaml.enc",
        "SHA256SUMS",
    }
    assert all(k.startswith(f"api-gateway/config/{stamp}/") for k in keys)
    cm = yaml.safe_load(moto.get(bucket, f"api-gateway/config/{stamp}/configmap-api-gateway-config.yaml"))
    assert cm["data"]["config.yaml"] == "server: {port: 8080}\n"
    assert not {"resourceVersion", "uid", "managedFields", "creationTimestamp"} & set(cm["metadata"])
    svc = yaml.safe_load(moto.get(bucket, f"api-gateway/config/{stamp}/service-api-gateway.yaml"))
    assert "status" not in svc and "clusterIP" not in svc["spec"]
    enc = moto.get(bucket, f"api-gateway/config/{stamp}/secrets.yaml.enc")
    assert b"c3VwZXItc2VjcmV0LXZhbHVl" not in enc and b"JWT_SECRET" not in enc
    # The documented decryption command gives the Secret back.
    plain = subprocess.run(
        [
            "openssl",
            "enc",
            "-d",
            "-aes-256-cbc",
            "-pbkdf2",
            "-iter",
            "200000",
            "-pass",
            "env:BACKUP_ENCRYPTION_KEY",
        ],
        input=enc,
        capture_output=True,
        env={"BACKUP_ENCRYPTION_KEY": key},
        check=True,
    ).stdout
    assert yaml.safe_load(plain)["data"]["JWT_SECRET"] == "c3VwZXItc2VjcmV0LXZhbHVl"
    sums = moto.get(bucket, f"api-gateway/config/{stamp}/SHA256SUMS").decode()
    assert "  secrets.yaml.enc\n" in sums and "  configmap-api-gateway-config.yaml\n" in sums
    # The key never appears on a command line the stand-in saw.
    assert all(key not in " ".join(c) for c in k.calls())
    assert ["-n", "production", "get", "configmap/api-gateway-config", "-o", "yaml"] in k.calls()


def test_secrets_are_never_uploaded_in_clear_text_without_a_key(moto: MotoS3, tmp_path: Path) -> None:
    k = kubectl(tmp_path)
    bucket = moto.bucket()
    out = config_backup(moto, bucket, env={**k.env, "BACKUP_ENCRYPTION_KEY": ""})
    assert out.returncode == 1
    assert "BACKUP_ENCRYPTION_KEY is not set" in out.stderr and out.stderr.count("\n") == 1
    assert moto.keys(bucket) == []


def test_secret_names_mode_keeps_names_and_keys_only(moto: MotoS3, tmp_path: Path) -> None:
    k = kubectl(tmp_path)
    bucket = moto.bucket()
    out = config_backup(moto, bucket, "--secrets", "names", env=k.env)
    assert out.returncode == 0, out.stderr
    key = next(k for k in moto.keys(bucket) if k.endswith("secret-names.yaml"))
    body = moto.get(bucket, key)
    assert yaml.safe_load(body) == {
        "secrets": [{"name": "api-gateway-secrets", "keys": ["JWT_SECRET", "REDIS_PASSWORD"]}]
    }
    assert b"c3VwZXI" not in body


def test_dry_run_lists_and_uploads_nothing(moto: MotoS3, tmp_path: Path) -> None:
    k = kubectl(tmp_path)
    bucket = moto.bucket()
    out = config_backup(moto, bucket, "--dry-run", "--secrets", "names", env=k.env)
    assert out.returncode == 0, out.stderr
    assert "would upload s3://" in out.stdout and "configmap-api-gateway-config.yaml" in out.stdout
    assert moto.keys(bucket) == []


def test_a_kubectl_failure_stops_the_backup_with_one_line(moto: MotoS3, tmp_path: Path) -> None:
    k = kubectl(tmp_path, get_configmap=("Error from server (Forbidden): configmaps is forbidden", 1))
    bucket = moto.bucket()
    out = config_backup(moto, bucket, "--secrets", "names", env=k.env)
    assert out.returncode == 1
    expected = (
        "kubectl get configmap/api-gateway-config failed: "
        "Error from server (Forbidden): configmaps is forbidden"
    )
    assert out.stderr == f"backup-config: {expected}\n"
    assert moto.keys(bucket) == []


@pytest.mark.parametrize("dest", ["backups/config", "s3:///config/"])
def test_a_bad_destination_is_a_one_line_error(dest: str, tmp_path: Path) -> None:
    out = run_script("backup-config.sh", "--dest", dest, env=kubectl(tmp_path).env)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "s3://BUCKET/PREFIX/" in out.stderr


# ------------------------------------------------------------------------------ retention
def prune(moto: MotoS3, bucket: str, *args: str) -> subprocess.CompletedProcess[str]:
    dest = f"s3://{bucket}/redis/"
    return run_script(
        "prune-backups.sh", "--dest", dest, "--endpoint-url", moto.url, "--now", "20261206-120000", *args
    )


def test_prune_keeps_hourly_daily_monthly_and_never_latest(moto: MotoS3) -> None:
    bucket = moto.bucket()
    s3 = moto.client()
    stamps = [
        "20261206-1000" + "00",
        "20261206-1030" + "00",  # same hour, within 7 days: the newer stays
        "20261203-0100" + "00",
        "20261203-0200" + "00",  # two hours, within 7 days: both stay
        "20261120-0100" + "00",
        "20261120-2300" + "00",  # one day, 7-30 days old: the newer stays
        "20260910-0000" + "00",
        "20260920-0000" + "00",  # one month, 30-365 days: the newer stays
        "20251101-0000" + "00",  # older than a year: goes
    ]
    for s in stamps:
        for suffix in (".rdb", ".rdb.sha256"):
            s3.put_object(Bucket=bucket, Key=f"redis/redis-backup-{s}{suffix}", Body=b"x")
    s3.put_object(Bucket=bucket, Key="redis/redis-backup-latest.rdb", Body=b"x")
    dry = prune(moto, bucket, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete 4" in dry.stdout and len(moto.keys(bucket)) == 19
    out = prune(moto, bucket)
    assert out.returncode == 0, out.stderr
    left = {k.removeprefix("redis/redis-backup-").split(".")[0] for k in moto.keys(bucket)}
    assert left == {
        "latest",
        "20261206-103000",
        "20261203-010000",
        "20261203-020000",
        "20261120-230000",
        "20260920-000000",
    }
    assert len(moto.keys(bucket)) == 11  # each kept snapshot with its .sha256, and latest
