"""Token-bucket leases (ratelimit/leases.py and `token_bucket_lease`): several instances
leasing from one bucket never admit a request that an exact token bucket would refuse, and
tokens given back are admitted again."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from apigate.ratelimit.algorithms import LEASE_MS, State, token_bucket_lease
from apigate.ratelimit.leases import LeaseBook

KEY = b"k"


class Cluster:
    """Instances with their LeaseBooks in front of one bucket, as the filter uses them
    (requests reach "Redis" instantly: the lease's time is measured from the send)."""

    def __init__(self, instances: int, limit: int, window: int) -> None:
        self.books = [LeaseBook() for _ in range(instances)]
        self.limit, self.window = limit, window
        self.state: State | None = None
        self.admitted: list[int] = []
        self.checks = 0

    def request(self, i: int, now_ms: int, leases: bool = True) -> bool:
        book, now = self.books[i], now_ms / 1000
        if leases and book.spend(KEY, now) >= 0:
            self.admitted.append(now_ms)
            return True
        want, epoch, back = book.ask(KEY, now, self.limit) if leases else (0, -1, 0)
        self.checks += 1
        allowed, remaining, _, _, granted, lease_epoch, valid, new, _ = token_bucket_lease(
            self.state, now_ms, self.limit, self.window, want, epoch, back
        )
        if new is not None:
            self.state = new
        if want:
            book.answer(KEY, now, granted, lease_epoch, valid, remaining)
        if allowed:
            self.admitted.append(now_ms)
        return allowed


def exact_bucket_admits(admitted: list[int], limit: int, window: int) -> bool:
    """Whether an exact token bucket (no leases) admits every one of these requests."""
    capacity = limit * window
    level, last = capacity, 0
    for t in sorted(admitted):
        level = min(capacity, level + (t - last) * limit)
        last = t
        if level < window:
            return False
        level -= window
    return True


@settings(max_examples=200, deadline=None)
@given(
    limit=st.sampled_from([2, 7, 64, 320, 640, 1000, 2000]),
    window=st.sampled_from([1000, 5000, 10_000, 20_000, 60_000]),
    steps=st.lists(
        st.tuples(
            st.sampled_from([0, 1, 5, 20, 60, 130, 250, 400]),  # ms since the step before
            st.integers(0, 3),  # instances 0 and 1 lease; 2 does not; 3: instance 1 dies
            st.sampled_from([1, 2, 5, 20, 100]),  # requests at once
        ),
        max_size=60,
    ),
)
def test_instances_with_leases_never_admit_what_an_exact_bucket_refuses(
    limit: int, window: int, steps: list[tuple[int, int, int]]
) -> None:
    c = Cluster(3, limit, window)
    now = 5 * LEASE_MS * 1000 + 17  # not on an epoch boundary
    for dt, instance, burst in steps:
        now += dt
        if instance == 3:  # instance 1 dies with its leases; a new one starts
            c.books[1] = LeaseBook()
            continue
        for _ in range(burst):
            c.request(instance, now, leases=instance != 2)
    assert exact_bucket_admits(c.admitted, limit, window)


def test_a_busy_key_mostly_spends_leased_tokens_and_still_stops_at_the_limit() -> None:
    c = Cluster(1, 6400, 60_000)  # leases of up to 200 tokens
    now = 1_000_000
    for _ in range(3200):  # half the bucket in one second
        assert c.request(0, now)
        now += 1 if c.checks % 3 else 0
    assert c.checks < 3200 / 10  # most requests never asked Redis
    # then the rest of the bucket, at once: never more than the exact bucket allows
    more = sum(c.request(0, now) for _ in range(5000))
    assert exact_bucket_admits(c.admitted, 6400, 60_000)
    assert 3200 + more >= 6400 - 200  # and not much less: near the limit, every check asks


def test_tokens_given_back_are_admitted_again() -> None:
    limit, window = 640, 60_000  # leases of up to 20 tokens
    c = Cluster(2, limit, window)
    now = 1_000_000
    assert c.request(0, now - 10)  # first seen: no lease
    assert KEY not in c.books[0].leases
    assert c.request(0, now)  # asked again within an epoch: its own token and a lease
    held = c.books[0].leases[KEY].tokens
    assert held == 4
    # instance 1, without leases, drains the bucket: the leased tokens are not there for it
    got = sum(c.request(1, now, leases=False) for _ in range(limit))
    assert got == limit - 2 - held
    # after the lease's time (and before Redis stops counting it), instance 0's next
    # request gives them back: they are admitted
    now += LEASE_MS + LEASE_MS * 6 // 10
    refill = ((LEASE_MS + LEASE_MS * 6 // 10) * limit) // window  # tokens refilled meanwhile
    got = sum(c.request(0, now, leases=not i) for i in range(limit))
    assert got == held + refill
    assert exact_bucket_admits(c.admitted, limit, window)


def test_a_key_requested_now_and_then_takes_no_lease() -> None:
    leasing, exact = Cluster(1, 100, 60_000), Cluster(1, 100, 60_000)
    now = 1_000_000
    for _ in range(20):
        assert leasing.request(0, now) and exact.request(0, now, leases=False)
        now += LEASE_MS + 1
    assert leasing.checks == 20 and KEY not in leasing.books[0].leases
    got = sum(leasing.request(0, now, leases=False) for _ in range(100))
    assert got == sum(exact.request(0, now, leases=False) for _ in range(100))  # nothing lost


def test_after_an_idle_time_the_whole_limit_is_there_again() -> None:
    c = Cluster(2, 100, 1000)
    now = 1_000_000
    for i in range(40):
        c.request(i % 2, now + i)
    now += 5000  # leases long over, bucket refilled
    got = sum(c.request(1, now, leases=False) for _ in range(200))
    assert got == 100


def test_keys_seen_once_hold_no_lease_and_are_forgotten() -> None:
    """10,000 users each asking once a second: no lease, and only the last half second's keys kept."""
    book = LeaseBook()
    now = 1000.0
    for _second in range(3):
        for i in range(10_000):
            assert book.ask(b"user:%d" % i, now, 1_000_000) == (0, -1, 0)
            now += 1 / 10_000
    assert len(book) == 0
    kept = len(book._seen) + len(book._older)
    assert kept <= 10_000 * 2 * LEASE_MS // 1000 + 1, kept
