"""AuditFilter: a complete apigate plugin (docs/PLUGINS.md walks through it).

- requires a tenant header on the way in (400 in the gateway's JSON error shape without it),
  and refuses tenants on a block list with 403;
- optionally waits on something asynchronous before deciding (here a stand-in for a
  lookup: `asyncio.sleep(0)`), which is how a plugin calls a service of its own;
- tags every response (`X-Audit: <tag>`), the gateway's own answers included;
- after each response, counts requests per tenant and emits one `audit` event through
  apigate's log pipeline (redacted, sampled and shipped like every other event);
- keeps a background task from `start()` to `close()`, which flushes a summary event.

Configured as:

    plugins:
      - name: audit
        module: "mycompany.audit:AuditFilter"
        path: examples/plugins          # relative to the config file
        priority: 800
        config: {tenant_header: X-Tenant, blocked_tenants: [evil-corp], tag: audited}
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

from pydantic import BaseModel, Field

from apigate.plugins import Headers, Plugin, RequestContext, RequestOutcome, Response, emit, json_error


class AuditFilter(Plugin):
    name = "audit"
    priority = 800  # after auth (1250) and rate limits (910): ctx.user is known here

    class Config(BaseModel):
        model_config = {"extra": "forbid"}

        tenant_header: str = Field("X-Tenant", description="Header naming the calling tenant.")
        blocked_tenants: list[str] = Field(default_factory=list, description="Tenants refused with 403.")
        tag: str = Field("audited", min_length=1, description="Value of the X-Audit response header.")
        lookup: bool = Field(False, description="Decide after an asynchronous lookup.")
        summary_interval_secs: float = Field(60.0, gt=0, description="How often the counts are logged.")

    config: Config

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.header = config.tenant_header.lower().encode()
        self.blocked = frozenset(config.blocked_tenants)
        self.tag = config.tag.encode()
        self.per_tenant: Counter[str] = Counter()
        self.task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._summaries())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        emit("INFO", "audit", "audit_summary", "Audit summary at shutdown", tenants=dict(self.per_tenant))

    async def _summaries(self) -> None:
        while True:
            await asyncio.sleep(self.config.summary_interval_secs)
            emit("INFO", "audit", "audit_summary", "Audit summary", tenants=dict(self.per_tenant))

    # ------------------------------------------------------------------ phases
    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        tenant = next((v.decode("latin-1") for n, v in ctx.cycle.headers if n == self.header), None)
        if tenant is None:
            return json_error(ctx, 400, "tenant_required", f"The {self.config.tenant_header} header is required.")
        if self.config.lookup:
            return self._after_lookup(ctx, tenant)  # an awaitable: the chain waits for it
        return self._decide(ctx, tenant)

    async def _after_lookup(self, ctx: RequestContext, tenant: str) -> Response | None:
        await asyncio.sleep(0)  # stands in for a call to a tenant directory
        return self._decide(ctx, tenant)

    def _decide(self, ctx: RequestContext, tenant: str) -> Response | None:
        if tenant in self.blocked:
            return json_error(ctx, 403, "tenant_blocked", "This tenant may not call this API.")
        self.per_tenant[tenant] += 1
        return None

    def on_response(self, ctx: RequestContext, status: int, headers: Headers) -> None:
        headers.append((b"x-audit", self.tag))

    def on_complete(self, ctx: RequestContext) -> None:
        emit(
            "INFO",
            "audit",
            "audit",
            "Request audited",
            correlation_id=ctx.request_id,
            route=ctx.route.id if ctx.route is not None else None,
            status=ctx.status,
            user_id=ctx.user,
        )
