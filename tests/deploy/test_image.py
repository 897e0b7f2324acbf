"""The container image's recipe, without a container engine: the Dockerfile says what it
must (multi-stage, slim Python 3.11, compiled data plane, non-root, HEALTHCHECK, `apigate
serve` with APIGATE_CONFIG, the paths deploy/k8s relies on), and its install steps run here
for real: the wheel from the files the Dockerfile copies, a fresh virtualenv from that
wheel, the compiled extensions placed beside the installed sources, then `apigate check`
on a deploy/config file and `apigate serve` answering a request.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml
from harness import REPO, ScriptedUpstream, free_port, port_accepts, stop_process, wait_until
from k8s import CONFIG_OF, K8S, dummy_env
from test_metrics import status_handler

from apigate import _native

DOCKERFILE = (REPO / "Dockerfile").read_text()
DOCKERIGNORE = [
    line.strip()
    for line in (REPO / ".dockerignore").read_text().splitlines()
    if line.strip() and line[0] != "#"
]
# The two steps the test runs itself, as the Dockerfile spells them.
WHEEL_STEP = "python -m pip wheel --no-deps --wheel-dir /wheels ."
VENV_STEP = (
    "python -m venv /opt/apigate \\\n && /opt/apigate/bin/pip install --no-cache-dir /wheels/apigate-*.whl"
)
COPY_SO_STEP = (
    "cd src && find . -name '*.so' -exec cp --parents {} /opt/apigate/lib/python3.11/site-packages/ \\;"
)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def gateway_pod() -> tuple[dict[str, object], dict[str, object]]:
    docs = yaml.safe_load_all((K8S / "base" / "gateway.yaml").read_text())
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_dockerfile_is_the_image_deploy_k8s_expects() -> None:
    steps = instructions()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) == 2 and all(f.startswith("python:3.11-slim") for f in froms), froms
    assert froms[0].endswith(" AS builder") and "COPY --from=builder /opt/apigate /opt/apigate" in DOCKERFILE
    for step in (
        WHEEL_STEP,
        VENV_STEP,
        COPY_SO_STEP,
        "CI=true /opt/build/bin/python scripts/build_native.py",
    ):
        assert step in DOCKERFILE, step
    # mypyc as pinned for `make install`
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    for pin in re.findall(r'"((?:mypy|types-PyYAML)==[^"]+)"', DOCKERFILE):
        assert pin in extra, f"{pin} differs from pyproject.toml"
    pod, container = gateway_pod()
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert f"APIGATE_CONFIG={env['APIGATE_CONFIG']}" in DOCKERFILE
    user = pod["securityContext"]["runAsUser"]
    (user_line,) = [args for word, args in steps if word == "USER"]
    assert user_line == f"{user}:{user}" and user != 0
    (entry,) = [args for word, args in steps if word == "ENTRYPOINT"]
    assert json.loads(entry) == ["apigate", "serve"]
    (health,) = [args for word, args in steps if word == "HEALTHCHECK"]
    assert "http://127.0.0.1:9090/health/live" in health
    # writable paths the read-only root needs exist and belong to the user
    for mount in container["volumeMounts"]:
        if mount["mountPath"] != "/tmp" and not mount.get("readOnly"):
            assert mount["mountPath"] in DOCKERFILE, mount
    assert "COPY scripts/ /app/scripts/" in DOCKERFILE  # the config-backup CronJob runs /app/scripts/...
    (packages,) = re.findall(r"apt-get install -y --no-install-recommends (openssl.*?) \\", DOCKERFILE)
    # the backup's kubectl and openssl; curl for the guide's `kubectl exec ... curl .../health/live`
    assert set(packages.split()) == {"openssl", "kubernetes-client", "curl"}


def ignored(path: str) -> bool:
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/")) for p in DOCKERIGNORE)


def test_dockerignore_keeps_the_build_inputs_and_drops_local_state() -> None:
    for needed in ("pyproject.toml", "README.md", "src", "scripts", "scripts/build_native.py"):
        assert not ignored(needed), needed
    for local in (
        ".git",
        ".venv",
        "build",
        "src/apigate/http/server.cpython-311-x86_64-linux-gnu.so",
        "tests",
    ):
        assert ignored(local) or ignored(local.split("/")[0]), local
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.M)
    for sources in copied:
        for source in sources.split():
            assert (REPO / source).exists() and not ignored(source.rstrip("/")), source


@pytest.mark.slow
def test_the_images_install_steps_build_a_gateway_that_serves(tmp_path: Path) -> None:
    # The build context as the Dockerfile copies it, without what .dockerignore drops.
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    shutil.copytree(
        REPO / "src", context / "src", ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info")
    )
    wheels = tmp_path / "wheels"
    run = dict(capture_output=True, text=True, timeout=540)
    step = WHEEL_STEP.replace("python", sys.executable, 1).replace("/wheels", str(wheels))
    out = subprocess.run(step.split(), cwd=context, **run)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (wheel,) = wheels.glob("apigate-*.whl")
    venv = tmp_path / "venv"
    out = subprocess.run([sys.executable, "-m", "venv", str(venv)], **run)
    assert out.returncode == 0, out.stderr
    out = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", str(wheel)],
        **run,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    apigate = venv / "bin" / "apigate"
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("APIGATE", "VIRTUAL_ENV"))}
    version = subprocess.run([str(apigate), "--version"], env=clean_env, **run)
    assert version.stdout.strip() == "apigate 0.1.0 (pure Python)"  # the wheel carries no build

    # The compiled step: extensions (here: the ones `make install` built from these same
    # sources) copied beside the installed sources, as the Dockerfile's find/cp does.
    site = next((venv / "lib").glob("python3.*/site-packages"))
    compiled = not _native.stale_modules()
    if compiled:
        src = REPO / "src"
        for so in src.rglob("*.so"):
            (site / so.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(so, site / so.relative_to(src))
        version = subprocess.run([str(apigate), "--version"], env=clean_env, **run)
        assert version.stdout.strip() == "apigate 0.1.0 (compiled data plane)", version.stderr

    config = CONFIG_OF["production"]
    env = {**clean_env, **dummy_env(config.read_text())}
    out = subprocess.run([str(apigate), "check", "--config", str(config)], env=env, **run)
    assert out.returncode == 0, out.stdout + out.stderr

    upstream = ScriptedUpstream(status_handler).start()
    port, mport = free_port(), free_port()
    cfg = {
        "server": {"bind_address": "127.0.0.1", "port": port, "drain_timeout_secs": 5},
        "logging": {"level": "WARN", "spool_dir": str(tmp_path / "spool")},
        "observability": {"metrics_port": mport},
        "upstreams": [{"id": "app", "base_url": upstream.url}],
        "routes": [{"id": "all", "path": "/*", "upstream_id": "app"}],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    serve_env = {**clean_env, "APIGATE_CONFIG": str(tmp_path / "config.yaml")}
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [str(apigate), "serve"], env=serve_env, stdout=log, stderr=log, start_new_session=True
        )
    try:
        assert wait_until(lambda: proc.poll() is not None or port_accepts(port), 30), "did not listen"
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/hello", timeout=10).status_code == 200
        assert wait_until(lambda: port_accepts(mport), 10)
        assert httpx.get(f"http://127.0.0.1:{mport}/health/live", timeout=10).status_code == 200
    finally:
        code = stop_process(proc)
        upstream.stop()
    assert code == 0, (tmp_path / "serve.log").read_text()
    print(
        f"wheel {wheel.name}: installed in a fresh virtualenv, {'compiled' if compiled else 'pure'}, served"
    )
