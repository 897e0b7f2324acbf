"""The shared Redis client's parts without I/O: the breaker's state machine and RESP."""

from __future__ import annotations

from apigate.redis.breaker import FAILURES_TO_OPEN, OPEN_AFTER_S, Breaker, CircuitBreaker
from apigate.redis.resp import Script, bulk, is_noscript, pack, unpack


def test_the_breaker_opens_after_failures_spanning_open_after_s() -> None:
    b = CircuitBreaker()
    # A burst of failures within a short stall (a busy host) does not open it.
    assert not any(b.failed(10.0 + i * 0.01) for i in range(FAILURES_TO_OPEN * 3))
    assert b.closed
    assert b.failed(10.0 + OPEN_AFTER_S) is True  # failing for OPEN_AFTER_S: open, once
    assert b.state is Breaker.OPEN and not b.closed
    assert b.failed(11.0) is False  # already open: not announced again
    b.close()
    assert b.closed and b.failures == 0


def test_a_success_in_between_starts_the_count_again() -> None:
    b = CircuitBreaker()
    for t in (0.0, 0.1, 0.2):
        b.failed(t)
    b.succeeded()
    assert b.failed(0.6) is False and b.failed(0.7) is False  # two in a row since, 0.1 s apart
    assert b.failed(1.2) is True  # three in a row, the first 0.6 s ago


def test_commands_pack_and_unpack() -> None:
    command = pack(b"SET", b"k", b"v\r\nwith newline", b"PX", b"10")
    assert command.startswith(b"*5\r\n$3\r\nSET\r\n")
    assert unpack(command) == [b"SET", b"k", b"v\r\nwith newline", b"PX", b"10"]


def test_a_script_call_is_an_evalsha_of_its_sha() -> None:
    script = Script("return 1")
    call = script.head(2) + bulk(b"key") + bulk(b"arg")
    assert unpack(call) == [b"EVALSHA", script.sha.encode(), b"1", b"key", b"arg"]
    assert unpack(script.load) == [b"SCRIPT", b"LOAD", b"return 1"]
    import hiredis

    assert is_noscript(hiredis.ReplyError("NOSCRIPT No matching script."))
    assert not is_noscript(hiredis.ReplyError("ERR something else")) and not is_noscript(b"NOSCRIPT")
