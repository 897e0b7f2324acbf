"""Rate limits in Redis: the Lua script, its arguments, and `RedisStore`, the rate-limit
face of the shared client (apigate/redis/: batching per loop turn, deadlines, the circuit
breaker, Sentinel and Cluster; the reasons for that design are there).

The script (`SCRIPT`) is `algorithms.py` transcribed: it reads the time with `TIME`, so
instances whose clocks disagree still agree on windows and refills, and it sets a TTL on
every key it writes. It is called by EVALSHA; a NOSCRIPT reply (Redis restarted, SCRIPT
FLUSH, a failover) makes the client send SCRIPT LOAD and the failed calls again, once.

Counters for metrics (exported by the telemetry package, which owns prometheus names):
- `backend_errors[reason]` -> rate_limit_backend_errors_total{reason}; reasons are
  `timeout`, `connection`, `script` (an error reply), `circuit_open` (checks answered
  without Redis because the breaker was open; counted by the filter).
- `latency_sum`, `latency_count`, `latency_buckets` (observations per bucket, upper
  bounds in `LATENCY_BUCKETS_S`, not cumulative; slower ones only in latency_count) ->
  rate_limit_backend_latency_seconds, one observation per round trip (write to last reply).
- `round_trips`, `checks_sent`: checks per round trip = checks_sent / round_trips.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from apigate.ratelimit.algorithms import LEASE_MS, Algorithm, Decision
from apigate.redis.breaker import Breaker
from apigate.redis.client import LATENCY_BUCKETS_S, ClientEvents, RedisClient, StoreUnavailable
from apigate.redis.endpoint import RedisTarget
from apigate.redis.resp import ReplyError, Script, bulk

LeaseDecision = tuple[bool, int, int, int, int, int, int]

__all__ = [
    "LATENCY_BUCKETS_S",
    "SCRIPT",
    "SCRIPT_SHA",
    "RedisStore",
    "StoreUnavailable",
    "call_args",
    "lease_args",
    "packed_args",
]

EVENTS = ClientEvents.for_store(
    "ratelimit", "rate_limit", "Rate-limit store", "rate_limit_backend_error", "Rate-limit store error"
)

# KEYS[1] the counter; ARGV: algorithm code (algorithms.Algorithm), limit, window_ms, and
# an optional fixed "now" in ms (tests replay the shared table of cases with it; the
# gateway always sends "" so that Redis TIME is used); for a token bucket with leases,
# then the tokens wanted, and the epoch and number of tokens given back. Returns
# {allowed, remaining, reset_ms, retry_ms}, and with leases {..., granted, epoch,
# valid_ms}. Each branch is the function of the same name in algorithms.py (the token
# bucket's is token_bucket_lease).
SCRIPT = """
-- Redis < 5 replicates scripts verbatim and refuses writes after TIME unless told to
-- replicate effects; Redis >= 5 does that anyway (and 7 keeps this call as a no-op).
if redis.replicate_commands then redis.replicate_commands() end

local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
local function cdiv(a, b) return -idiv(-a, b) end
local function num(x) return string.format('%.0f', x) end

local key = KEYS[1]
local alg, limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now
-- Keys expire in Redis's real time. A replay with a fixed "now" (tests) keeps them a
-- minute longer: its simulated clock stands still while the real one runs, and a key with
-- 1 ms left could expire between two steps of the same simulated millisecond. The state
-- itself never relies on expiry (window index and bucket time are stored), so this only
-- delays reclaiming memory, and only in replays.
local slack = 0
if ARGV[4] ~= nil and ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
  slack = 60000
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + idiv(tonumber(t[2]), 1000)
end
local s = redis.call('HMGET', key, 'a', 'b', 'c', 'd', 'e')
local exists = s[1] ~= false and s[2] ~= false

if alg == 1 then
  -- token_bucket_lease; ARGV[5..7] (optional): tokens wanted, epoch and tokens given back
  local lease_ms = __LEASE_MS__
  local want, ret_epoch, ret = tonumber(ARGV[5] or '0'), tonumber(ARGV[6] or '-1'), tonumber(ARGV[7] or '0')
  local capacity = limit * window
  local epoch = idiv(now, lease_ms)
  local level, cur, prev = capacity, 0, 0
  if exists then
    level = tonumber(s[1])
    local last = tonumber(s[2])
    local e = epoch
    if s[3] ~= false and s[4] ~= false and s[5] ~= false then
      e, cur, prev = tonumber(s[3]), tonumber(s[4]), tonumber(s[5])
    end
    if e > epoch then epoch = e end
    if now > last then
      level = level + (now - last) * limit
      local r1 = (e + 1) * lease_ms
      if r1 <= now then
        level = math.min(level, capacity - cur - prev + (now - r1) * limit)
        if r1 + lease_ms <= now then
          level = math.min(level, capacity - cur + (now - r1 - lease_ms) * limit)
        end
      end
    end
    if e == epoch - 1 then
      cur, prev = 0, cur
    elseif e ~= epoch then
      cur, prev = 0, 0
    end
  end
  if ret > 0 then
    local units = ret * window
    if ret_epoch == epoch then
      units = math.min(units, cur)
      cur = cur - units
    elseif ret_epoch == epoch - 1 then
      units = math.min(units, prev)
      prev = prev - units
    else
      units = 0
    end
    level = level + units
  end
  level = math.min(level, capacity - cur - prev)
  local valid = (epoch + 2) * lease_ms - now
  local allowed, granted, retry = 0, 0, 0
  if level >= window then
    allowed = 1
    level = level - window
    if want > 0 then
      local spare = idiv(level - idiv(capacity, 2), window)
      if spare > 0 then
        granted = math.min(want, spare)
        level = level - granted * window
        cur = cur + granted * window
      end
    end
  else
    retry = cdiv(window - level, limit)
  end
  local reset = cdiv(capacity - level, limit)
  if allowed == 1 or ret > 0 then
    local ttl = reset
    if cur > 0 or prev > 0 then ttl = math.max(reset, valid) end
    redis.call('HSET', key, 'a', num(level), 'b', num(now), 'c', num(epoch), 'd', num(cur), 'e', num(prev))
    redis.call('PEXPIRE', key, ttl + slack)
  end
  if ARGV[5] == nil then return {allowed, idiv(level, window), reset, retry} end
  return {allowed, idiv(level, window), reset, retry, granted, epoch, valid}
end

local index = idiv(now, window)
if alg == 2 then
  local count = 0
  if exists and tonumber(s[1]) == index then count = tonumber(s[2]) end
  local reset = (index + 1) * window - now
  if count < limit then
    count = count + 1
    redis.call('HSET', key, 'a', num(index), 'b', num(count))
    redis.call('PEXPIRE', key, reset + slack)
    return {1, limit - count, reset, 0}
  end
  return {0, 0, reset, reset}
end

local elapsed = now - index * window
local current, previous = 0, 0
if exists then
  local w = tonumber(s[1])
  if w == index then
    current, previous = tonumber(s[2]), tonumber(s[3] or '0')
  elseif w == index - 1 then
    previous = tonumber(s[2])
  end
end
local budget = limit * window
local weighted = previous * (window - elapsed) + current * window
if weighted + window <= budget then
  current = current + 1
  weighted = weighted + window
  local ttl = 2 * window - elapsed
  redis.call('HSET', key, 'a', num(index), 'b', num(current), 'c', num(previous))
  redis.call('PEXPIRE', key, ttl + slack)
  return {1, idiv(budget - weighted, window), ttl, 0}
end
local reset = window - elapsed
if current > 0 then reset = 2 * window - elapsed end
local retry
if current < limit then
  retry = (window - elapsed) - idiv((limit - current - 1) * window, previous)
else
  retry = (window - elapsed) + window - idiv((limit - 1) * window, current)
end
return {0, 0, reset, retry}
""".replace("__LEASE_MS__", str(LEASE_MS))
_SCRIPT = Script(SCRIPT)
SCRIPT_SHA = _SCRIPT.sha
_EVALSHA_HEAD = _SCRIPT.head(5)  # the key and four ARGV
_EVALSHA_LEASE_HEAD = _SCRIPT.head(8)  # the key and seven ARGV


def call_args(algorithm: Algorithm, limit: int, window: int, now: int | None = None) -> tuple[bytes, ...]:
    """ARGV of the script for one limit (`now`: tests only)."""
    return (b"%d" % algorithm, b"%d" % limit, b"%d" % window, b"" if now is None else b"%d" % now)


def lease_args(want: int, epoch: int, back: int) -> bytes:
    """ARGV 5-7 of a token-bucket check with leases (ratelimit/leases.py)."""
    return bulk(b"%d" % want) + bulk(b"%d" % epoch) + bulk(b"%d" % back)


def packed_args(args: Sequence[bytes]) -> bytes:
    """The ARGV part of the EVALSHA command, packed once per configured limit."""
    return b"".join(bulk(a) for a in args)


class RedisStore:
    """Rate-limit checks through the shared Redis client."""

    def __init__(self, target: RedisTarget | str | None, timeout_ms: int) -> None:
        if not isinstance(target, RedisTarget):
            target = RedisTarget(target)
        self.client = RedisClient(target, timeout_ms / 1000, EVENTS)
        self.backend_errors = self.client.backend_errors  # one dict: the client counts its reasons
        self.backend_errors.update(script=0, circuit_open=0)

    def __repr__(self) -> str:
        return f"<RedisStore {self.client!r}>"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.client.loop

    @property
    def available(self) -> bool:
        """False while the breaker is open: answer without Redis."""
        return self.client.available

    @property
    def breaker(self) -> Breaker:
        return self.client.breaker.state

    @property
    def latency_sum(self) -> float:
        return self.client.latency_sum

    @property
    def latency_count(self) -> int:
        return self.client.latency_count

    @property
    def latency_buckets(self) -> list[int]:
        return self.client.latency_buckets

    @property
    def round_trips(self) -> int:
        return self.client.round_trips

    @property
    def checks_sent(self) -> int:
        return self.client.commands_sent

    @property
    def checks_per_round_trip(self) -> float:
        return self.checks_sent / self.round_trips if self.round_trips else 0.0

    def check(self, key: bytes, args: bytes) -> asyncio.Future[Decision]:
        """`submit` with a future: its Decision, or StoreUnavailable raised."""
        fut: asyncio.Future[Decision] = self.loop.create_future()

        def answer(reply: object) -> None:
            if fut.done():
                return
            result = self.decision(reply)
            if isinstance(result, StoreUnavailable):
                fut.set_exception(result)
            else:
                fut.set_result(result)

        self.submit(key, args, answer)
        return fut

    def submit(self, key: bytes, args: bytes, answer: Callable[[object], None]) -> None:
        """Queue one check (ARGV packed by `packed_args`); sent with the loop turn's batch.
        `answer` is called exactly once, with Redis's reply or a StoreUnavailable, at the
        latest when the deadline passes; `decision(reply)` reads it. (The filter uses this
        form: no future, no task, no closure of the store's own per check.)"""
        self.client.submit(_EVALSHA_HEAD + bulk(key) + args, answer, _SCRIPT)

    def submit_lease(self, key: bytes, args: bytes, lease: bytes, answer: Callable[[object], None]) -> None:
        """`submit` with leases: `lease` from `lease_args`; `lease_decision` reads the reply."""
        self.client.submit(_EVALSHA_LEASE_HEAD + bulk(key) + args + lease, answer, _SCRIPT)

    def lease_decision(self, reply: object) -> LeaseDecision | StoreUnavailable:
        """A reply to `submit_lease`: the Decision's four fields, then the tokens granted, the
        lease's epoch and how long Redis counts it (ms)."""
        if type(reply) is list and len(reply) == 7:
            return reply[0] == 1, reply[1], reply[2], reply[3], reply[4], reply[5], reply[6]
        return self._failure(reply)

    def decision(self, reply: object) -> Decision | StoreUnavailable:
        """A reply (or the failure in its place) as the script's Decision."""
        if type(reply) is list and len(reply) == 4:
            return reply[0] == 1, reply[1], reply[2], reply[3]
        return self._failure(reply)

    def _failure(self, reply: object) -> StoreUnavailable:
        if isinstance(reply, StoreUnavailable):
            return reply
        if isinstance(reply, ReplyError):
            self.backend_errors["script"] += 1
            self.client.log_error("script", str(reply))
        return StoreUnavailable("script")

    def start(self) -> None:
        self.client.start()

    async def ping(self) -> bool:
        """True when Redis answers PING within timeout_ms (a readiness check can use it)."""
        return await self.client.ping()

    async def close(self) -> None:
        await self.client.close()
