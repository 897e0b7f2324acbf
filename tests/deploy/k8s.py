"""Reading deploy/: overlays rendered by `kubectl kustomize`, objects looked up by kind and
name, the gateway's config for an overlay, and strict schema validation (kubernetes-validate
for built-in kinds, the repository's JSON Schema for the VPA CRD, a failure for anything else).
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from harness import REPO, require_tool

from apigate.config.loader import load_config_text
from apigate.config.schema import Config

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("production", "staging", "development", "production-redis-cluster")
# Each overlay's gateway configuration (deploy/config/<env>/config.yaml).
CONFIG_OF = {name: DEPLOY / "config" / name / "config.yaml" for name in OVERLAYS}
# Oldest and newest Kubernetes the manifests are validated against.
K8S_VERSIONS = ("1.29.0", "1.37.0")
# CRDs kubernetes-validate has no schema for, and the schema kept for each in the repository.
CRD_SCHEMAS = {
    ("autoscaling.k8s.io/v1", "VerticalPodAutoscaler"): K8S
    / "schemas"
    / "verticalpodautoscaler-autoscaling.k8s.io-v1.json",
}
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")

Obj = dict[str, Any]


@dataclass(frozen=True)
class Build:
    name: str
    objects: list[Obj]

    def all(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def find(self, kind: str, name: str) -> Obj | None:
        return next((o for o in self.all(kind) if o["metadata"]["name"] == name), None)

    def get(self, kind: str, name: str) -> Obj:
        obj = self.find(kind, name)
        assert obj is not None, f"{self.name}: no {kind} {name}"
        return obj

    @property
    def namespace(self) -> str:
        return str(self.get("Namespace", self.name.split("-redis")[0])["metadata"]["name"])

    @property
    def gateway(self) -> Obj:
        return self.get("Deployment", "api-gateway")

    @property
    def container(self) -> Obj:
        containers = self.gateway["spec"]["template"]["spec"]["containers"]
        return next(c for c in containers if c["name"] == "api-gateway")

    def config_text(self) -> str:
        """The gateway's config.yaml as the ConfigMap carries it."""
        return str(self.get("ConfigMap", "api-gateway-config")["data"]["config.yaml"])

    def config(self) -> Obj:
        """The file as YAML, before ${VAR} expansion."""
        return dict(yaml.safe_load(self.config_text()))

    def loaded(self) -> Config:
        """The file as apigate loads it, with dummy values for the Secret's variables."""
        text = self.config_text()
        return load_config_text(text, f"{self.name}/config.yaml", dummy_env(text), base_dir="/")


def kubectl() -> str:
    return require_tool("kubectl", "/usr/bin/kubectl", "/usr/local/bin/kubectl")


def kustomize(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120)


def build_overlay(name: str) -> Build:
    out = kustomize(K8S / "overlays" / name)
    assert out.returncode == 0, f"kubectl kustomize overlays/{name} failed:\n{out.stderr}"
    return Build(name, [d for d in yaml.safe_load_all(out.stdout) if d])


def schema_problems(obj: Obj, version: str) -> list[str]:
    """Strict validation of one object; a kind with no schema at all is a problem too."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if key in CRD_SCHEMAS:
        schema = json.loads(CRD_SCHEMAS[key].read_text())
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{where}: {e.json_path}: {e.message}" for e in validator.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: no schema for {key[0]} {key[1]} (add one to deploy/k8s/schemas)"]
    except kubernetes_validate.ValidationError as e:
        return [f"{where} (Kubernetes {version}): {e.message}"]
    return []


def env_refs(config_text: str) -> dict[str, bool]:
    """${VAR} names in a config file's values (not its comments) -> whether every reference
    has a default."""
    refs: dict[str, bool] = {}

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            for m in ENV_REF.finditer(value):
                refs[m.group(1)] = refs.get(m.group(1), True) and m.group(2) is not None

    walk(yaml.safe_load(config_text))
    return refs


def dummy_env(config_text: str) -> dict[str, str]:
    """A value for every variable the file needs: what a test passes instead of the Secret."""
    return {
        var: f"dummy-{var.lower()}" for var, has_default in env_refs(config_text).items() if not has_default
    }


def port_number(container: Obj, port: int | str) -> int | None:
    """A probe's or Service's port (a number or a name) as a containerPort, None if absent."""
    for p in container.get("ports", []):
        if port in (p["containerPort"], p.get("name")):
            return int(p["containerPort"])
    return None


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def pod_templates(build: Build) -> list[tuple[str, Obj]]:
    """(workload name, pod template) of every Deployment, StatefulSet, Job and CronJob."""
    out = []
    for o in build.objects:
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            out.append((o["metadata"]["name"], o["spec"]["template"]))
        elif o["kind"] == "CronJob":
            out.append((o["metadata"]["name"], o["spec"]["jobTemplate"]["spec"]["template"]))
    return out
