"""A small S3 client for backups, on botocore (already a runtime dependency of apigate).

Objects are written whole with one PUT, so a failed upload leaves nothing behind; each
backup object carries its SHA-256 in the `sha256` metadata field (stored atomically with
the object), and a `<key>.sha256` sidecar in `sha256sum` format for people. Credentials
and region come from the usual AWS environment (AWS_ACCESS_KEY_ID, AWS_REGION, IAM roles);
`--endpoint-url` points at another S3 implementation (MinIO, moto in the tests).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apigate.ops.errors import OpsError

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str  # a prefix ending in "/" for a destination, an object key for a source

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def child(self, name: str) -> S3Url:
        prefix = self.key if not self.key or self.key.endswith("/") else self.key + "/"
        return S3Url(self.bucket, prefix + name)


def parse_s3_url(url: str) -> S3Url:
    """s3://bucket/prefix/ or s3://bucket/key; anything else is an OpsError."""
    if not url.startswith("s3://"):
        raise OpsError(f"not an S3 URL: {url!r} (expected s3://BUCKET/PREFIX/)")
    bucket, _, key = url[5:].partition("/")
    if not bucket:
        raise OpsError(f"no bucket in {url!r} (expected s3://BUCKET/PREFIX/)")
    return S3Url(bucket, key)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class S3:
    """The few S3 calls the backups need, each turned into an OpsError naming the object."""

    def __init__(self, endpoint_url: str | None = None) -> None:
        import botocore.session
        from botocore.config import Config as BotoConfig

        session = botocore.session.get_session()
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.client: Any = session.create_client(
            "s3",
            region_name=region,
            endpoint_url=endpoint_url,
            config=BotoConfig(connect_timeout=10, read_timeout=120, retries={"max_attempts": 3}),
        )

    def _call(self, what: str, fn: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, fn)(**kwargs)
        except ClientError as e:
            err = e.response.get("Error", {})
            raise OpsError(
                f"{what}: {err.get('Code', 'error')}: {err.get('Message', '')}".rstrip(": ")
            ) from e
        except BotoCoreError as e:
            raise OpsError(f"{what}: {e}") from e

    def put_file(self, url: S3Url, path: Path, sha256: str, metadata: dict[str, str] | None = None) -> None:
        meta = {"sha256": sha256, **(metadata or {})}
        with open(path, "rb") as body:
            self._call(
                f"upload to {url} failed",
                "put_object",
                Bucket=url.bucket,
                Key=url.key,
                Body=body,
                Metadata=meta,
            )

    def put_bytes(self, url: S3Url, data: bytes, metadata: dict[str, str] | None = None) -> None:
        self._call(
            f"upload to {url} failed",
            "put_object",
            Bucket=url.bucket,
            Key=url.key,
            Body=data,
            Metadata=metadata or {},
        )

    def copy(self, src: S3Url, dst: S3Url) -> None:
        """Server-side copy, metadata included (the checksum travels with the object)."""
        self._call(
            f"copy {src} to {dst} failed",
            "copy_object",
            Bucket=dst.bucket,
            Key=dst.key,
            CopySource={"Bucket": src.bucket, "Key": src.key},
            MetadataDirective="COPY",
        )

    def download(self, url: S3Url, path: Path) -> dict[str, str]:
        """Write the object to `path`; returns its metadata."""
        resp = self._call(f"download of {url} failed", "get_object", Bucket=url.bucket, Key=url.key)
        body = resp["Body"]
        try:
            with open(path, "wb") as out:
                while chunk := body.read(CHUNK):
                    out.write(chunk)
        finally:
            body.close()
        meta: dict[str, str] = dict(resp.get("Metadata") or {})
        return meta

    def delete(self, url: S3Url) -> None:
        self._call(f"delete of {url} failed", "delete_object", Bucket=url.bucket, Key=url.key)

    def list(self, prefix: S3Url) -> list[str]:
        """Every key under the prefix."""
        keys: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": prefix.bucket, "Prefix": prefix.key}
            if token:
                kwargs["ContinuationToken"] = token
            resp = self._call(f"listing {prefix} failed", "list_objects_v2", **kwargs)
            keys.extend(obj["Key"] for obj in resp.get("Contents", []))
            if not resp.get("IsTruncated"):
                return keys
            token = resp.get("NextContinuationToken")
