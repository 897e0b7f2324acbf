"""Token-bucket leases: one instance's side (the Redis side is `token_bucket_lease` in
algorithms.py and its Lua transcription in redis.py; docs/RATE_LIMITING.md, "Leases").

Without leases every request of a Redis-limited route is one script call. With
`rate_limiting.leases`, a check for a key far from its limit also takes a few tokens,
which the next requests of that key on this instance spend without asking Redis, until
they run out or their time is up; then the next check gives back what is left and asks
again. Redis counts leased tokens against the bucket until they are given back or their
epoch ends, so the limit is never exceeded, across any number of instances. What a lease
can cost is the other way: tokens leased and neither spent nor given back in time (an
instance killed, a key no longer requested) are refused to everyone until the bucket refills
them. The lease's size follows the key's rate: it doubles while leases run out before their
time and halves when they do not, between `FIRST` and `MOST` tokens (and a 32nd of the limit);
a key leases only while it is requested more often than every `LEASE_MS`.
"""

from __future__ import annotations

from apigate.ratelimit.algorithms import LEASE_MS

FIRST = 4
MOST = 256
LEASE_S = LEASE_MS / 1000
MARGIN_S = LEASE_MS / 2000  # stop spending this long before Redis stops counting the lease
SWEEP_AT = 4096  # leases kept before those of keys gone quiet are dropped


class Lease:
    __slots__ = ("asked", "epoch", "pending", "remaining", "size", "tokens", "until")

    def __init__(self) -> None:
        self.tokens = 0  # left to spend here
        self.until = 0.0  # clock.now() after which they are not spent
        self.epoch = -1  # Redis's lease epoch, to give them back
        self.remaining = 0  # the bucket's own remaining tokens at the grant
        self.size = FIRST
        self.pending = False  # a check asking for a lease is out
        self.asked = 0.0  # when this key last asked Redis


class LeaseBook:
    """The leases this instance holds, by limit key, for the keys that are busy."""

    def __init__(self) -> None:
        self.leases: dict[bytes, Lease] = {}
        self._next_sweep = 0.0
        # keys that asked Redis in this and the previous LEASE_S (two generations, so that a key
        # seen once costs no Lease and is forgotten without a sweep)
        self._seen: dict[bytes, float] = {}
        self._older: dict[bytes, float] = {}
        self._rotate_at = 0.0

    def __len__(self) -> int:
        return len(self.leases)

    def spend(self, key: bytes, now: float) -> int:
        """One token from this key's lease: the remaining count to report, or -1 (no lease,
        empty, or past its time: ask Redis)."""
        lease = self.leases.get(key)
        if lease is None or lease.tokens == 0 or now >= lease.until:
            return -1
        lease.tokens -= 1
        return lease.remaining + lease.tokens

    def ask(self, key: bytes, now: float, limit: int) -> tuple[int, int, int]:
        """What the next check of `key` asks for: (tokens wanted, epoch and number of tokens
        given back). A key leases only when it asked Redis less than a lease epoch ago: a key
        requested now and then would leave most of every lease unspent, refused to all."""
        lease = self.leases.get(key)
        if lease is None:
            if not self._seen_lately(key, now):
                return 0, -1, 0
            if len(self.leases) >= SWEEP_AT and now >= self._next_sweep:
                self._sweep(now)
            lease = self.leases[key] = Lease()
            busy = True
        elif lease.pending:  # one lease at a time
            return 0, -1, 0
        else:
            busy = now - lease.asked < LEASE_S
        back = lease.tokens
        if lease.epoch >= 0:
            if back == 0 and now < lease.until:  # ran out in time: the key is busier
                lease.size = min(lease.size * 2, MOST)
            elif back > 0:
                lease.size = max(lease.size // 2, FIRST)
        lease.tokens = 0
        lease.asked = now
        if not busy:
            return 0, lease.epoch, back
        lease.pending = True
        return min(lease.size, max(1, limit // 32)), lease.epoch, back

    def answer(
        self, key: bytes, sent_at: float, granted: int, epoch: int, valid_ms: int, remaining: int
    ) -> None:
        """The reply to a check that asked for tokens (`granted` 0 when Redis gave none, or
        failed)."""
        lease = self.leases.get(key)
        if lease is None:
            return
        lease.pending = False
        if granted > 0:
            lease.tokens = granted
            lease.epoch = epoch
            lease.remaining = remaining
            # from when the check was sent, which is before Redis read its clock
            lease.until = sent_at + valid_ms / 1000 - MARGIN_S

    def _seen_lately(self, key: bytes, now: float) -> bool:
        """Whether `key` asked Redis less than LEASE_S ago (and note that it asks now)."""
        if now >= self._rotate_at:
            self._older, self._seen = self._seen, {}
            self._rotate_at = now + LEASE_S
        last = self._seen.get(key)
        if last is None:
            last = self._older.get(key)
        self._seen[key] = now
        return last is not None and now - last < LEASE_S

    def _sweep(self, now: float) -> None:
        """Drop the leases of keys gone quiet (what they still hold is lost: counted as spent)."""
        self._next_sweep = now + 1.0
        quiet = [
            k for k, v in self.leases.items() if not v.pending and now >= v.until and now - v.asked >= LEASE_S
        ]
        for key in quiet:
            del self.leases[key]
