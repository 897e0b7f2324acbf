"""Everything docs/ and deploy/ mention exists: metric names, config keys, endpoints, scripts,
command flags, Kubernetes object names and link anchors (runbook_url annotations included).

It walks whatever files are there (Markdown, YAML, JSON), so manifests and docs added later
are checked too. Each check collects what the files name and compares it with the code:
the metric registry, the configuration schema, the health endpoints, scripts/, the
`apigate` argument parser (scripts in scripts/ map to the apigate command they wrap), and
the headings of the linked Markdown files (GitHub's anchor rules).
"""

from __future__ import annotations

import argparse
import json
import re
import types
from functools import cache
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from apigate.cli import build_parser
from apigate.config import Config
from apigate.telemetry import metrics
from apigate.telemetry.health import HEALTH_LIVE, HEALTH_READY

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = (".md", ".yaml", ".yml", ".json")
# Series that others export (Prometheus, kube-state-metrics, cAdvisor, exporters), by prefix,
# and the HPA's custom metric, which a Prometheus adapter derives from http_requests_total.
EXTERNAL_PREFIXES = ("kube_", "container_", "node_", "process_", "go_", "redis_", "prometheus_", "apiserver_")
ADAPTER_METRICS = {"http_requests_per_second"}
METRIC_SHAPE = re.compile(
    r"\b([a-z][a-z0-9]*(?:_[a-z0-9]+)*_(?:total|seconds|bytes|depth|info|rate|per_second)"
    r"(?:_bucket|_sum|_count)?)\b"
)
SECTIONS = set(Config.model_fields)
KEY_SHAPE = re.compile(
    r"`((?:" + "|".join(sorted(SECTIONS)) + r")(?:\[\d*\])?(?:\.[a-z_]+(?:\[\d*\])?)+)(?<!\.py)(?<!\.md)`"
)
ENDPOINT = re.compile(r"/health/[a-z]+")
SCRIPT = re.compile(r"\bscripts/[\w.-]+\.(?:sh|py)\b")
ANCHOR_LINK = re.compile(r"\]\(([^)\s]*?)#([^)\s]+)\)")
# The guide's §6 links into docs/RUNBOOK.md; the issue adds two sections.
GUIDE_ANCHORS = {
    "scaling-the-gateway",
    "rolling-back",
    "configuration-changes",
    "certificate-rotation",
    "high-error-rates",
    "high-latency",
    "authentication-issues",
    "rate-limiting-problems",
    "redis-recovery",
    "log-sink-outage",
}
# The names the guide gives the gateway's Kubernetes objects (used until deploy/k8s exists).
GUIDE_OBJECTS = {
    "deployment": {"api-gateway"},
    "service": {"api-gateway", "api-gateway-metrics", "redis", "redis-replica"},
    "statefulset": {"redis-master", "redis-replica"},
    "horizontalpodautoscaler": {"api-gateway-hpa"},
    "poddisruptionbudget": {"api-gateway-pdb"},
    "configmap": {"api-gateway-config"},
    "cronjob": {"config-backup"},
}
KINDS = {
    "deployment": "deployment",
    "deploy": "deployment",
    "deployments": "deployment",
    "svc": "service",
    "service": "service",
    "statefulset": "statefulset",
    "sts": "statefulset",
    "hpa": "horizontalpodautoscaler",
    "pdb": "poddisruptionbudget",
    "configmap": "configmap",
    "cm": "configmap",
    "cronjob": "cronjob",
}


def documents() -> list[Path]:
    files = [p for d in ("docs", "deploy") for p in sorted((ROOT / d).rglob("*")) if p.suffix in SUFFIXES]
    assert ROOT / "docs" / "RUNBOOK.md" in files and ROOT / "docs" / "OPERATIONS.md" in files
    return files


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


@cache
def text(p: Path) -> str:
    return p.read_text(encoding="utf-8")


def logical_lines(p: Path) -> list[str]:
    """Lines with backslash continuations joined (a command split over lines is one command)."""
    return text(p).replace("\\\n", " ").splitlines()


# ------------------------------------------------------------------------------ metrics
def exported() -> set[str]:
    out: set[str] = set()
    for name, fam in metrics.REGISTRY.families.items():
        out.add(name)
        if fam.kind == "histogram":
            out.update(name + s for s in ("_bucket", "_sum", "_count"))
    return out


def not_metrics() -> set[str]:
    """Names shaped like metrics that are not: config keys (max_body_bytes), report fields."""
    from apigate.ops.capacity import LOADTEST_FIELDS

    return {key.rsplit(".", 1)[-1] for key in schema_keys()} | set(LOADTEST_FIELDS)


def test_every_metric_name_mentioned_is_exported() -> None:
    ours, others = exported(), not_metrics()
    seen: set[str] = set()
    unknown = []
    for p in documents():
        for name in METRIC_SHAPE.findall(text(p)):
            if name in ours:
                seen.add(name)
            elif any(o.endswith("_" + name) for o in ours):
                continue  # a grep pattern: `grep error_rate` finds http_error_rate
            elif (
                name not in others and not name.startswith(EXTERNAL_PREFIXES) and name not in ADAPTER_METRICS
            ):
                unknown.append(f"{rel(p)}: {name}")
    assert unknown == [], "metric names that apigate does not export:\n" + "\n".join(sorted(set(unknown)))
    assert {"http_requests_total", "auth_failures_total", "log_spool_bytes"} <= seen


def test_metric_extraction() -> None:
    line = (
        "grep -E 'log_sink_errors_total|log_spool_bytes' and rate(http_request_duration_seconds_bucket[5m])"
    )
    assert METRIC_SHAPE.findall(line) == [
        "log_sink_errors_total",
        "log_spool_bytes",
        "http_request_duration_seconds_bucket",
    ]
    assert METRIC_SHAPE.findall("server.drain_timeout_secs, spool_max_mb") == []


# ------------------------------------------------------------------------------ config keys
def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (list, dict, Union, types.UnionType):
        return [m for arg in get_args(annotation) for m in _models(arg)]
    return []


def schema_keys(model: type[BaseModel] = Config, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        out.add(path)
        for sub in _models(info.annotation):
            out |= schema_keys(sub, path)
    return out


def test_every_config_key_mentioned_exists() -> None:
    keys = schema_keys()
    unknown, seen = [], set()
    for p in documents():
        for key in KEY_SHAPE.findall(text(p)):
            plain = re.sub(r"\[\d*\]", "", key)
            (seen.add(plain) if plain in keys else unknown.append(f"{rel(p)}: {key}"))
    assert unknown == [], "config keys the schema does not have:\n" + "\n".join(unknown)
    assert {"rate_limiting.failure_mode", "logging.spool_max_mb", "server.tls.cert_path"} <= seen


def test_key_extraction() -> None:
    found = KEY_SHAPE.findall(
        "`routes[].rate_limit` and `rate_limiting.timeout_ms`, not `foo.bar` or `server`"
    )
    assert found == ["routes[].rate_limit", "rate_limiting.timeout_ms"]


# ------------------------------------------------------------------------------ endpoints and scripts
def test_every_health_endpoint_and_script_mentioned_exists() -> None:
    wrong = []
    for p in documents():
        for endpoint in ENDPOINT.findall(text(p)):
            if endpoint not in (HEALTH_LIVE, HEALTH_READY):
                wrong.append(f"{rel(p)}: {endpoint}")
        for script in SCRIPT.findall(text(p)):
            if not (ROOT / script).is_file():
                wrong.append(f"{rel(p)}: {script} does not exist")
    assert wrong == []


# ------------------------------------------------------------------------------ flags
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def command_options(words: list[str]) -> tuple[str, set[str]] | None:
    """(command path, the flags it accepts) for `apigate WORD [WORD]`, or None if unknown."""
    parser = build_parser()
    path = []
    for word in words:
        sub = _subparsers(parser)
        if word not in sub:
            break
        parser = sub[word]
        path.append(word)
    if not path:
        return None
    return " ".join(path), _options(parser) | _options(build_parser())


def wrapped(script: str) -> list[str] | None:
    if not (ROOT / script).is_file():
        return None
    m = re.search(r"^run_apigate ([a-z -]+?) \"\$@\"$", text(ROOT / script), re.MULTILINE)
    return m.group(1).split() if m else None


INVOCATION = re.compile(r"(?:^|[\s`(/])(apigate|scripts/[\w.-]+\.(?:sh|py))((?:\s+[^\s|;&#`]+)*)")


def invocations(line: str) -> list[tuple[str, list[str]]]:
    """(program, its words up to a pipe, ;, && or comment) for each apigate/script call on a line."""
    return [(m.group(1), m.group(2).split()) for m in INVOCATION.finditer(line)]


def test_every_flag_mentioned_is_accepted() -> None:
    wrong, checked = [], 0
    for p in documents():
        for line in logical_lines(p):
            for program, words in invocations(line):
                flags = [w.split("=", 1)[0] for w in words if re.fullmatch(r"--[a-z][a-z0-9-]*(=\S*)?", w)]
                if program == "apigate":
                    found = command_options([w for w in words if not w.startswith("-")][:2])
                    if found is None:
                        continue
                    where, accepted = found
                elif (command := wrapped(program)) is not None:
                    found = command_options(command)
                    assert found is not None, f"{program} wraps an unknown command {command}"
                    where, accepted = program, found[1]
                elif (ROOT / program).is_file():
                    where, accepted = program, {f for f in flags if f in text(ROOT / program)}
                else:
                    continue  # a missing script is reported by the test above
                for flag in flags:
                    checked += 1
                    if flag not in accepted:
                        wrong.append(f"{rel(p)}: {where} has no {flag}: {line.strip()}")
    assert wrong == [], "\n".join(wrong)
    assert checked > 20


def test_every_apigate_subcommand_mentioned_exists() -> None:
    commands = set(_subparsers(build_parser()))
    wrong = []
    for p in documents():
        for m in re.finditer(r"`apigate ([a-z][a-z-]*)", text(p)):
            if m.group(1) not in commands:
                wrong.append(f"{rel(p)}: apigate {m.group(1)}")
    assert wrong == []


def test_invocation_parsing() -> None:
    line = "scripts/restore-redis.sh --source s3://b/k --pod production/redis-0 | tee log # --nope"
    assert invocations(line) == [
        ("scripts/restore-redis.sh", ["--source", "s3://b/k", "--pod", "production/redis-0"])
    ]
    assert command_options(["backup", "redis", "extra"]) is not None
    assert command_options(["nope"]) is None


# ------------------------------------------------------------------------------ Kubernetes names
def manifest_objects() -> dict[str, set[str]] | None:
    k8s = ROOT / "deploy" / "k8s"
    if not k8s.is_dir():
        return None
    found: dict[str, set[str]] = {}
    for p in sorted(k8s.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(text(p)):
            if isinstance(doc, dict) and "kind" in doc and isinstance(doc.get("metadata"), dict):
                found.setdefault(str(doc["kind"]).lower(), set()).add(str(doc["metadata"].get("name")))
    return found


def test_kubectl_commands_name_objects_that_exist() -> None:
    """In docs, `kubectl ... deployment/api-gateway` names an object deploy/k8s defines (the guide's
    names until deploy/k8s exists)."""
    objects = manifest_objects() or GUIDE_OBJECTS
    wrong, checked = [], 0
    for p in documents():
        if p.suffix != ".md":
            continue
        for line in logical_lines(p):
            if "kubectl" not in line:
                continue
            refs = re.findall(r"(?<![\w./-])([a-z]+)/([a-z0-9][a-z0-9-]*)\b(?![/.\w])", line)
            refs += re.findall(
                r"kubectl (?:get|describe|patch|delete|edit) ([a-z]+) ([a-z0-9][a-z0-9-]*)", line
            )
            for kind, name in refs:
                if kind not in KINDS:
                    continue
                checked += 1
                if name not in objects.get(KINDS[kind], set()):
                    wrong.append(f"{rel(p)}: {kind}/{name}")
    assert wrong == [], "objects neither deploy/k8s nor the guide defines:\n" + "\n".join(wrong)
    assert checked > 10


# ------------------------------------------------------------------------------ anchors
def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    s = re.sub(r"[`*_]", "", heading.strip().lower())
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(md: Path) -> set[str]:
    in_code = False
    out: set[str] = set()
    for line in text(md).splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6} (.+)", line)):
            out.add(slug(m.group(1)))
    return out


def links() -> list[tuple[Path, Path, str]]:
    """(document, target file, anchor) for every Markdown anchor link and runbook_url."""
    out = []
    for p in documents():
        if p.suffix == ".md":
            for target, anchor in ANCHOR_LINK.findall(text(p)):
                if target.startswith(("http://", "https://")):
                    continue
                out.append((p, (p.parent / target).resolve() if target else p, anchor))
        for url in re.findall(r"runbook_url: \"?([^\"\s]+)", text(p)):
            target, _, anchor = url.partition("#")
            out.append((p, ROOT / target, anchor))
    return out


def test_every_anchor_link_and_runbook_url_resolves() -> None:
    wrong = []
    for doc, target, anchor in links():
        if not target.is_file():
            wrong.append(f"{rel(doc)}: {target} does not exist")
        elif target.suffix == ".md" and anchor not in anchors(target):
            wrong.append(f"{rel(doc)}: {rel(target)}#{anchor} has no such section")
    assert wrong == [], "\n".join(wrong)


def test_the_runbook_has_the_guides_sections_and_every_alert_links_one() -> None:
    assert anchors(ROOT / "docs" / "RUNBOOK.md") >= GUIDE_ANCHORS
    for path in sorted((ROOT / "deploy" / "prometheus" / "alerts").glob("*.yaml")):
        for group in yaml.safe_load(text(path))["groups"]:
            for rule in group["rules"]:
                url = rule["annotations"].get("runbook_url", "")
                assert url.startswith("docs/RUNBOOK.md#"), f"{rule['alert']} has no runbook_url"
                assert url.split("#")[1] in anchors(ROOT / "docs" / "RUNBOOK.md")


def test_each_runbook_section_says_alerts_finding_commands_and_verification() -> None:
    sections = re.split(r"^## ", text(ROOT / "docs" / "RUNBOOK.md"), flags=re.MULTILINE)[1:]
    by_anchor = {slug(sec.splitlines()[0]): sec for sec in sections}
    for anchor in GUIDE_ANCHORS:
        body = by_anchor[anchor]
        for part in ("**Alerts:**", "**Diagnose finding", "```sh\n", "**Verify:**"):
            assert part in body, f"RUNBOOK.md#{anchor} has no {part}"


def test_slugs_follow_github() -> None:
    assert slug("Start here: what is wrong?") == "start-here-what-is-wrong"
    assert slug("Several workers (`server.workers > 1`)") == "several-workers-serverworkers--1"


@pytest.mark.parametrize("path", ["deploy/backup/s3-lifecycle.json"])
def test_json_in_deploy_parses(path: str) -> None:
    json.loads(text(ROOT / path))
