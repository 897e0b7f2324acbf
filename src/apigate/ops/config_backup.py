"""`apigate backup config`: §4.1.2 done right (wrapped by scripts/backup-config.sh).

What the guide's script gets wrong, and what happens here instead:

* it writes into a directory it never creates: here a private temporary directory;
* it uploads Secrets in clear text (`kubectl get secret -o yaml` is base64, not
  encryption): here Secrets are piped from kubectl straight into `openssl enc`
  (AES-256-CBC, PBKDF2, 200,000 iterations, salted) with the passphrase read from
  $BACKUP_ENCRYPTION_KEY by openssl itself (`-pass env:`), so neither the clear text nor
  the key touches the disk or a command line; without the key it refuses, unless
  `--secrets names` asks for only the Secrets' names and data keys, no values;
* it ignores every failure: here any kubectl, openssl or upload failure stops the run
  with a one-line reason, and the objects are uploaded only after all exports worked.

Each run uploads `<dest>/<YYYYmmdd-HHMMSS>/`: one YAML per object (server-side fields
such as resourceVersion, uid, managedFields and status removed, so `kubectl apply -f`
takes it back), `secrets.yaml.enc` (or `secret-names.yaml`), and `SHA256SUMS`.

Decrypt: openssl enc -d -aes-256-cbc -pbkdf2 -iter 200000 -pass env:BACKUP_ENCRYPTION_KEY -in secrets.yaml.enc
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import yaml

from apigate.ops.errors import OpsError, one_line
from apigate.ops.redis_backup import TIMESTAMP_FORMAT
from apigate.ops.redis_restore import Kubectl
from apigate.ops.s3 import S3, parse_s3_url

KEY_ENV = "BACKUP_ENCRYPTION_KEY"
OPENSSL_ENC = ["enc", "-aes-256-cbc", "-pbkdf2", "-iter", "200000", "-salt", "-pass", f"env:{KEY_ENV}"]
REQUIRED = ("configmap/api-gateway-config",)
OPTIONAL = (
    "deployment/api-gateway",
    "service/api-gateway",
    "service/api-gateway-metrics",
    "horizontalpodautoscaler/api-gateway-hpa",
    "poddisruptionbudget/api-gateway-pdb",
    "cronjob/config-backup",
)
SECRETS = ("api-gateway-secrets",)
SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation", "selfLink")


def clean(obj: dict[str, Any]) -> dict[str, Any]:
    """An exported object without what the API server adds, ready for `kubectl apply`."""
    obj.pop("status", None)
    meta = obj.get("metadata") or {}
    for f in SERVER_FIELDS:
        meta.pop(f, None)
    annotations = meta.get("annotations") or {}
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    if not annotations:
        meta.pop("annotations", None)
    if obj.get("kind") == "Service":
        spec = obj.get("spec") or {}
        for f in ("clusterIP", "clusterIPs"):
            spec.pop(f, None)
    return obj


def export(k: Kubectl, ref: str, required: bool) -> bytes | None:
    args = ["get", ref, "-o", "yaml"] + ([] if required else ["--ignore-not-found"])
    text = k(*args)
    if not text.strip():
        return None
    return yaml.safe_dump(clean(yaml.safe_load(text)), sort_keys=False).encode()


def secrets_payload(k: Kubectl, names: tuple[str, ...], mode: str) -> tuple[str, bytes] | None:
    docs = []
    for name in names:
        text = k("get", f"secret/{name}", "-o", "yaml", "--ignore-not-found")
        if text.strip():
            docs.append(clean(yaml.safe_load(text)))
    if not docs:
        return None
    if mode == "names":
        listing = [
            {"name": d["metadata"]["name"], "keys": sorted((d.get("data") or {}).keys())} for d in docs
        ]
        return "secret-names.yaml", yaml.safe_dump({"secrets": listing}, sort_keys=False).encode()
    if not os.environ.get(KEY_ENV):
        raise OpsError(
            f"{KEY_ENV} is not set: refusing to upload Secrets unencrypted "
            "(set it, or use --secrets names for names and keys only)"
        )
    clear = yaml.safe_dump_all(docs, sort_keys=False).encode()
    try:
        out = subprocess.run(["openssl", *OPENSSL_ENC], input=clear, capture_output=True, timeout=60)
    except FileNotFoundError as e:
        raise OpsError("openssl not found (needed to encrypt Secrets)") from e
    if out.returncode != 0:
        raise OpsError(
            f"openssl could not encrypt the Secrets: {one_line(out.stderr.decode(errors='replace'))}"
        )
    return "secrets.yaml.enc", out.stdout


def backup_config(
    namespace: str,
    dest: str,
    endpoint_url: str | None,
    dry_run: bool,
    secrets: str,
    say: Callable[[str], None] = print,
) -> str:
    prefix = parse_s3_url(dest)
    k = Kubectl(namespace)
    files: dict[str, bytes] = {}
    for ref in REQUIRED + OPTIONAL:
        data = export(k, ref, ref in REQUIRED)
        if data is not None:
            files[ref.replace("/", "-") + ".yaml"] = data
    payload = secrets_payload(k, SECRETS, secrets)
    if payload is not None:
        files[payload[0]] = payload[1]
    sums = "".join(f"{hashlib.sha256(v).hexdigest()}  {n}\n" for n, v in sorted(files.items()))
    files["SHA256SUMS"] = sums.encode()
    stamp = time.strftime(TIMESTAMP_FORMAT, time.gmtime())
    target = prefix.child(stamp + "/")
    if dry_run:
        for name, data in files.items():
            say(f"would upload {target.child(name)} ({len(data)} bytes)")
        return str(target)
    s3 = S3(endpoint_url)
    for name, data in files.items():
        s3.put_bytes(target.child(name), data)
        say(f"uploaded {target.child(name)} ({len(data)} bytes)")
    return str(target)


def cmd_backup_config(args: argparse.Namespace) -> int:
    backup_config(args.namespace, args.dest, args.endpoint_url, args.dry_run, args.secrets)
    return 0


def add_command(kinds: Any, guarded: Callable[..., Any], endpoint: Callable[[Any], None]) -> None:
    c = kinds.add_parser(
        "config",
        help="export the gateway's Kubernetes objects (Secrets encrypted) to S3",
        description="Export the gateway's ConfigMap, Deployment, Services, HPA, PDB (and Secrets, encrypted "
        f"with openssl and ${KEY_ENV}) to s3://.../<YYYYmmdd-HHMMSS>/. Uses $KUBECTL. "
        "Wrapped by scripts/backup-config.sh.",
    )
    c.add_argument("--namespace", default="production", help="(production)")
    c.add_argument("--dest", required=True, metavar="S3URL", help="s3://BUCKET/PREFIX/")
    endpoint(c)
    c.add_argument("--dry-run", action="store_true", help="export and list, upload nothing")
    c.add_argument(
        "--secrets",
        choices=("encrypt", "names"),
        default="encrypt",
        help=f"encrypt (needs ${KEY_ENV}) or names: only names and keys (encrypt)",
    )
    c.set_defaults(ops=guarded("backup-config", cmd_backup_config))
