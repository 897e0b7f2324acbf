"""docs/DEPLOYMENT.md is checked against the rendered manifests: every kubectl command names
objects, labels, ports and namespaces that exist, every path exists, and the tables are
what the overlays build."""

from __future__ import annotations

import re
import shlex

import pytest
from harness import REPO
from k8s import Build, matches, pod_templates

DOC = (REPO / "docs" / "DEPLOYMENT.md").read_text()
# Written by the Operate work (issue 13); tests/deploy/test_lint.py requires it to be there.
FROM_ISSUE_13 = {"scripts/backup-config.sh"}
KINDS = {
    "deployment": "Deployment",
    "svc": "Service",
    "hpa": "HorizontalPodAutoscaler",
    "vpa": "VerticalPodAutoscaler",
    "job": "Job",
}


def section(title: str) -> str:
    start = DOC.index(f"## {title}")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end >= 0 else None]


def kubectl_commands() -> list[list[str]]:
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", DOC, re.S):
        text = re.sub(r"\$\([^()]*\)", "SUBSTITUTED", re.sub(r"\\\n\s*", " ", block))
        for line in text.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("kubectl "):
                commands.append(shlex.split(line))
    return commands


def secrets_used(build: Build) -> set[str]:
    names = set()
    for obj in build.objects:
        for m in re.finditer(r"'(?:name|secretName)': '([a-z0-9-]+)'", repr(obj)):
            names.add(m.group(1))
    return names


def test_every_kubectl_command_names_what_the_overlays_build(builds: dict[str, Build]) -> None:
    commands = kubectl_commands()
    assert len(commands) >= 15
    namespaces = {b.namespace: b for b in builds.values() if b.name != "production-redis-cluster"}
    for cmd in commands:
        ns = cmd[cmd.index("-n") + 1] if "-n" in cmd else "production"
        build = builds["production-redis-cluster"] if "redis-cluster" in " ".join(cmd) else namespaces[ns]
        for i, word in enumerate(cmd):
            if "/" in word and word.split("/")[0] in KINDS:
                kind, name = word.split("/", 1)
                obj = build.get(KINDS[kind], name)
                if kind == "svc" and cmd[1] == "port-forward":
                    remote = int(cmd[i + 1].split(":")[1])
                    assert remote in [p["port"] for p in obj["spec"]["ports"]], cmd
            if word in ("hpa", "vpa") and i + 1 < len(cmd):
                build.get(KINDS[word], cmd[i + 1])
            if word == "-l":
                key, _, value = cmd[i + 1].partition("=")
                assert any(matches({key: value}, t["metadata"]["labels"]) for _, t in pod_templates(build)), (
                    cmd
                )
            if word in ("-k", "-f") and cmd[1] == "apply":
                assert (REPO / cmd[i + 1]).exists(), cmd
            if cmd[1:3] == ["create", "secret"] and i == 4:
                assert word in secrets_used(build), cmd
            if cmd[1] == "exec" and word == "exec":
                pod = cmd[cmd.index(ns) + 1]
                sts, _, ordinal = pod.rpartition("-")
                assert int(ordinal) < build.get("StatefulSet", sts)["spec"]["replicas"], cmd


def test_every_path_the_page_names_exists() -> None:
    paths = set(re.findall(r"(?<![\w/.-])((?:deploy|scripts|tests|docs)/[\w./-]*[\w-])", DOC))
    assert "deploy/prometheus-adapter/rules.yaml" in paths
    for path in sorted(paths):
        if "<env>" in path or "&lt;env&gt;" in path or path in FROM_ISSUE_13:
            continue
        assert (REPO / path).exists(), path


def test_what_runs_table_is_the_production_build(builds: dict[str, Build]) -> None:
    rows = re.findall(r"^\| ([A-Za-z, ]+) \| ([^|]+) \|", section("What runs"), re.M)
    assert len(rows) >= 12
    for kinds, names in rows:
        for kind in kinds.split(", "):
            for name in re.findall(r"`([a-z0-9-]+)`", names):
                builds["production"].get(kind, name)


@pytest.mark.parametrize("overlay", ["production", "staging", "development", "production-redis-cluster"])
def test_environments_table_is_what_each_overlay_builds(builds: dict[str, Build], overlay: str) -> None:
    (row,) = [
        r for r in re.findall(r"^\| ([a-z-]+) \| (.+) \|$", section("Environments"), re.M) if r[0] == overlay
    ]
    ns, replicas, resources, pdb, sinks, host = (c.strip() for c in row[1].split(" | "))
    build = builds[overlay]
    assert ns == build.namespace
    hpa = build.get("HorizontalPodAutoscaler", "api-gateway-hpa")["spec"]
    r = build.gateway["spec"]["replicas"]
    assert replicas == f"{r} ({hpa['minReplicas']}..{hpa['maxReplicas']})"
    res = build.container["resources"]
    req, lim = res["requests"], res["limits"]
    assert resources == f"{req['cpu']}, {req['memory']} / {lim['cpu']}, {lim['memory']}"
    found = build.find("PodDisruptionBudget", "api-gateway-pdb")
    assert pdb == ("none" if found is None else f"minAvailable {found['spec']['minAvailable']}")
    assert sinks == ", ".join(s["type"] for s in build.config()["logging"]["sinks"])
    assert host == build.get("Ingress", "api-gateway")["spec"]["rules"][0]["host"]
