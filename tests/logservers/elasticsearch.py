"""A strict Elasticsearch `_bulk` endpoint (what the sink relies on, checked as ES does).

- `POST /_bulk` only, `Content-Type: application/x-ndjson`, body ending in a newline;
  action lines are objects with exactly one of index/create/update/delete, the source
  line after index/create must be an object. Violations: 400 with `parse_exception`
  (and recorded in `protocol_errors`, which tests assert stays empty).
- Basic auth or ApiKey when configured: otherwise 401.
- `create` of an existing `_id` is a per-item 409 (version_conflict_engine_exception);
  `index` of an existing `_id` overwrites and is counted in `overwrites`.
- Fault injection: `burst_429` whole-request 429s; `item_429_every` makes every n-th item
  of a request fail with a per-item 429 the first time it is seen; documents holding
  `"bad_field"` fail with a per-item 400 `mapper_parsing_exception`.
"""

from __future__ import annotations

import base64
from collections import Counter
from typing import Any

import orjson

from logservers.base import Reply, ThreadedServer, json_reply


class ElasticsearchServer(ThreadedServer):
    def __init__(
        self,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        api_key: str | None = None,
    ) -> None:
        super().__init__(port)
        self.auth: str | None = None
        if username is not None:
            self.auth = "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode()
        elif api_key is not None:
            self.auth = "ApiKey " + api_key
        self.docs: dict[str, dict[str, Any]] = {}  # _id -> source
        self.index_of: dict[str, str] = {}
        self.conflicts = 0
        self.overwrites = 0
        self.burst_429 = 0
        self.item_429_every = 0
        self._seen_429: set[str] = set()
        self.bulk_sizes: list[int] = []
        self.statuses: Counter[int] = Counter()

    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        if path.split("?")[0] != "/_bulk":
            return json_reply(404, {"error": "no handler", "status": 404})
        if method not in ("POST", "PUT"):
            return json_reply(405, {"error": "method not allowed", "status": 405})
        if self.auth is not None and headers.get("authorization") != self.auth:
            return json_reply(401, {"error": {"type": "security_exception"}, "status": 401})
        ctype = headers.get("content-type", "").split(";")[0].strip()
        if ctype not in ("application/x-ndjson", "application/json"):
            return self._parse_error(f"Content-Type {ctype!r} is not supported")
        if not body.endswith(b"\n"):
            return self._parse_error("The bulk request must be terminated by a newline [\\n]")
        if self.burst_429 > 0:
            self.burst_429 -= 1
            return json_reply(429, {"error": {"type": "es_rejected_execution_exception"}, "status": 429})
        lines = body[:-1].split(b"\n")
        items: list[dict[str, Any]] = []
        errors = False
        i = 0
        n = 0
        while i < len(lines):
            try:
                action = orjson.loads(lines[i])
            except orjson.JSONDecodeError:
                return self._parse_error(f"malformed action line {i}")
            if not isinstance(action, dict) or len(action) != 1:
                return self._parse_error(f"action line {i} must hold exactly one action")
            op, meta = next(iter(action.items()))
            if op not in ("index", "create", "update", "delete") or not isinstance(meta, dict):
                return self._parse_error(f"unknown action [{op}]")
            if "_index" not in meta:
                return self._parse_error("index is missing")
            if op == "delete":
                i += 1
                continue
            if i + 1 >= len(lines):
                return self._parse_error("source line missing")
            try:
                doc = orjson.loads(lines[i + 1])
            except orjson.JSONDecodeError:
                return self._parse_error(f"malformed source line {i + 1}")
            if not isinstance(doc, dict):
                return self._parse_error("source must be an object")
            i += 2
            n += 1
            _id = meta.get("_id")
            status, err = self._apply(op, meta["_index"], _id, doc, n)
            self.statuses[status] += 1
            item: dict[str, Any] = {"_index": meta["_index"], "_id": _id, "status": status}
            if err:
                errors = True
                item["error"] = err
            items.append({op: item})
        self.bulk_sizes.append(n)
        return json_reply(200, {"took": 1, "errors": errors, "items": items})

    def _apply(self, op: str, index: str, _id: str | None, doc: dict[str, Any], n: int) -> tuple[int, Any]:
        if "bad_field" in doc:
            return 400, {"type": "mapper_parsing_exception", "reason": "failed to parse field [bad_field]"}
        if self.item_429_every and n % self.item_429_every == 0 and _id not in self._seen_429:
            self._seen_429.add(str(_id))
            return 429, {"type": "es_rejected_execution_exception", "reason": "queue full"}
        if _id is None:
            _id = f"auto-{len(self.docs)}"
        with self.lock:
            if _id in self.docs:
                if op == "create":
                    self.conflicts += 1
                    return 409, {
                        "type": "version_conflict_engine_exception",
                        "reason": "document already exists",
                    }
                self.overwrites += 1
            self.docs[_id] = doc
            self.index_of[_id] = index
        return 201, None

    def _parse_error(self, reason: str) -> Reply:
        self.protocol_errors.append(reason)
        return json_reply(400, {"error": {"type": "parse_exception", "reason": reason}, "status": 400})
