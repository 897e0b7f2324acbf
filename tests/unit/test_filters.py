"""The filter chain contract: priority order, short-circuit, sync or async, safe on_complete."""

from __future__ import annotations

import asyncio
from typing import Any

from cycles import request_context

from apigate.gateway.filters import Filter, FilterChain, RequestContext, RequestOutcome, Response
from apigate.http.headers import Headers


class Recorder(Filter):
    def __init__(
        self, name: str, priority: int, log: list[str], reply: Response | None = None, wait: bool = False
    ):
        self.name = name
        self.priority = priority
        self.log = log
        self.reply = reply
        self.wait = wait

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        self.log.append(f"req:{self.name}")
        if self.wait:
            return self._later()
        return self.reply

    async def _later(self) -> Response | None:
        await asyncio.sleep(0)
        self.log.append(f"resumed:{self.name}")
        return self.reply

    def on_response(self, ctx: RequestContext, status: int, headers: Headers) -> None:
        self.log.append(f"resp:{self.name}")

    def on_complete(self, ctx: RequestContext) -> None:
        self.log.append(f"done:{self.name}")


CTX = request_context()


def test_requests_run_by_descending_priority_and_responses_in_reverse() -> None:
    log: list[str] = []
    chain = FilterChain(
        [Recorder("rl", 910, log), Recorder("auth", 1250, log), Recorder("corr", 100000, log)]
    )
    assert chain.start_request(CTX) is None
    chain.run_response(CTX, 200, [])
    chain.run_complete(CTX)
    assert log == [
        "req:corr", "req:auth", "req:rl",
        "resp:rl", "resp:auth", "resp:corr",
        "done:rl", "done:auth", "done:corr",
    ]  # fmt: skip


def test_a_reply_ends_the_chain() -> None:
    log: list[str] = []
    deny = Response(401, [], b"no")
    chain = FilterChain([Recorder("auth", 2, log, reply=deny), Recorder("rl", 1, log)])
    assert chain.start_request(CTX) is deny
    assert log == ["req:auth"]


def test_a_filter_that_waits_continues_the_chain_asynchronously() -> None:
    log: list[str] = []
    chain = FilterChain([Recorder("a", 3, log), Recorder("b", 2, log, wait=True), Recorder("c", 1, log)])
    pending: Any = chain.start_request(CTX)
    assert log == ["req:a", "req:b"]  # c waits for b
    assert asyncio.run(pending) is None
    assert log == ["req:a", "req:b", "resumed:b", "req:c"]


def test_on_complete_never_raises() -> None:
    class Broken(Filter):
        def on_complete(self, ctx: RequestContext) -> None:
            raise RuntimeError("boom")

    log: list[str] = []
    chain = FilterChain([Broken(), Recorder("after", -1, log)])
    chain.run_complete(CTX)  # logged, swallowed
    assert log == ["done:after"]
