"""scripts/test-recovery.sh: the local drill for real, and the cluster drill through a kubectl stand-in."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from harness import require_tool
from ops_fixtures import FakeKubectl, MotoS3, moto, run_script

__all__ = ["moto"]


@pytest.fixture(autouse=True)
def _redis_tools() -> None:
    for name in ("redis-server", "redis-cli", "redis-check-rdb"):
        require_tool(name)


def test_local_drill_restores_serves_and_prints_rpo_rto(moto: MotoS3) -> None:
    out = run_script(
        "test-recovery.sh", "--local", "--endpoint-url", moto.url, "--sessions", "300", timeout=180
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "restored 601 keys, " in out.stdout and "sampled keys equal" in out.stdout
    rpo = re.search(r"^RPO: (\d+\.\d+) s", out.stdout, re.MULTILINE)
    rto = re.search(r"^RTO: (\d+\.\d+) s", out.stdout, re.MULTILINE)
    assert rpo and rto, out.stdout
    assert 0 <= float(rpo.group(1)) < 60 and 0 < float(rto.group(1)) < 60
    assert out.stdout.rstrip().endswith("DR drill passed")
    assert any(k.startswith("redis/redis-backup-") for k in moto.keys("apigate-drill"))


def test_local_drill_starts_its_own_s3_and_reports_json() -> None:
    out = run_script("test-recovery.sh", "--local", "--sessions", "20", "--format", "json", timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result["keys"] == 41 and result["sampled"] >= 20
    assert result["rto_s"] > 0 and result["backup"].startswith("s3://apigate-drill/redis/redis-backup-")


CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: api-gateway-config, namespace: production}\n"
DEPLOYMENT = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api-gateway, namespace: production}\n"


def upload_config_backup(moto: MotoS3) -> str:
    bucket = moto.bucket()
    s3 = moto.client()
    for stamp in ("20261201-020000", "20261202-020000"):
        s3.put_object(
            Bucket=bucket, Key=f"config/{stamp}/configmap-api-gateway-config.yaml", Body=CONFIGMAP.encode()
        )
        s3.put_object(
            Bucket=bucket, Key=f"config/{stamp}/deployment-api-gateway.yaml", Body=DEPLOYMENT.encode()
        )
        s3.put_object(
            Bucket=bucket, Key=f"config/{stamp}/poddisruptionbudget-api-gateway-pdb.yaml", Body=b"x: 1"
        )
    return bucket


def test_cluster_drill_follows_the_guide_in_dr_test_and_cleans_up(moto: MotoS3, tmp_path: Path) -> None:
    bucket = upload_config_backup(moto)
    k = FakeKubectl(
        tmp_path / "k",
        [
            ("get pod -l app=api-gateway", "api-gateway-7d9f-abcde", 0),
            ("exec api-gateway-7d9f-abcde", '{"status":"ok"}\n', 0),
        ],
    )
    out = run_script(
        "test-recovery.sh", "--config-source", f"s3://{bucket}/config/", "--endpoint-url", moto.url, env=k.env
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "restoring s3://" in out.stdout and "/config/20261202-020000/" in out.stdout
    assert "DR test successful!" in out.stdout
    calls = [" ".join(c) for c in k.calls()]
    assert calls[0] == "-n dr-test create namespace dr-test"
    applies = [c for c in calls if " apply -f " in c]
    assert len(applies) == 2  # the ConfigMap and the Deployment; not the PDB
    assert {name: obj["metadata"]["namespace"] for name, obj in k.applied().items()} == {
        "configmap-api-gateway-config.yaml": "dr-test",
        "deployment-api-gateway.yaml": "dr-test",
    }
    assert any("wait --for=condition=ready pod -l app=api-gateway" in c for c in calls)
    assert any("exec api-gateway-7d9f-abcde -- python3 -c" in c and "/health/live" in c for c in calls)
    assert calls[-1] == "-n dr-test delete namespace dr-test --wait=false"


def test_cluster_drill_deletes_the_namespace_when_a_step_fails(moto: MotoS3, tmp_path: Path) -> None:
    bucket = upload_config_backup(moto)
    k = FakeKubectl(
        tmp_path / "k",
        [
            (
                "wait --for=condition=ready",
                "error: timed out waiting for the condition on pods/api-gateway-x",
                1,
            ),
        ],
    )
    out = run_script(
        "test-recovery.sh", "--config-source", f"s3://{bucket}/config/", "--endpoint-url", moto.url, env=k.env
    )
    assert out.returncode == 1
    assert out.stderr == (
        "test-recovery: kubectl wait --for=condition=ready failed: "
        "error: timed out waiting for the condition on pods/api-gateway-x\n"
    )
    assert " ".join(k.calls()[-1]) == "-n dr-test delete namespace dr-test --wait=false"
