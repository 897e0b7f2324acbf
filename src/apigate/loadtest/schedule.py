"""The arrival schedule: when the k-th request of a run is due, for every profile.

A profile is a list of segments whose rate changes linearly (constant, ramp) or not at
all; the k-th request (k = 0, 1, ...) is due at the time t where the integral of the rate
from 0 to t reaches k. Requests are spaced evenly along that curve rather than drawn at
random, as wrk2 does: the count in any interval is exact, so a run's request count and
per-second targets are known before it starts and a report can be checked against them.

`--workers N` splits the schedule by index: worker i sends requests i, i+N, i+2N, ...,
so the union is exactly the schedule and each worker's share is evenly spread.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


class ScheduleError(ValueError):
    """A profile that cannot run (shown to the user as one line)."""


def parse_duration(text: str) -> float:
    """`30s`, `10m`, `1h`, `1m30s`, `250ms` or plain seconds (`90`) -> seconds."""
    s = text.strip().lower()
    try:
        value = float(s)
    except ValueError:
        pos, value = 0, 0.0
        unit_s = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        for m in _DURATION_PART.finditer(s):
            if m.start() != pos:
                break
            value += float(m.group(1)) * unit_s[m.group(2)]
            pos = m.end()
        if pos != len(s) or not s:
            raise ScheduleError(f"invalid duration {text!r} (examples: 30s, 10m, 1h, 1m30s)") from None
    if not math.isfinite(value) or value <= 0:
        raise ScheduleError(f"invalid duration {text!r}: must be more than 0")
    return value


def format_duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Segment:
    """From `start` (s) for `length` s, the rate goes linearly from `rate0` to `rate1` req/s."""

    start: float
    length: float
    rate0: float
    rate1: float

    def count(self, u: float) -> float:
        """Requests due in the first `u` seconds of the segment (the rate's integral)."""
        u = min(max(u, 0.0), self.length)
        slope = (self.rate1 - self.rate0) / self.length
        return self.rate0 * u + slope * u * u / 2

    def time_at(self, n: float) -> float:
        """Offset u in the segment where `count(u) == n` (0 <= n <= count(length))."""
        a = self.rate0
        b = (self.rate1 - self.rate0) / self.length
        # u = (-a + sqrt(a^2 + 2bn)) / b, written without the cancellation when b ~ 0
        return 2 * n / (a + math.sqrt(max(a * a + 2 * b * n, 0.0)))


@dataclass(frozen=True)
class Profile:
    """A named schedule: `kind` is constant, ramp or spike."""

    kind: str
    segments: tuple[Segment, ...]
    description: str

    @property
    def duration(self) -> float:
        last = self.segments[-1]
        return last.start + last.length

    def cumulative(self, t: float) -> float:
        """The rate's integral from 0 to t."""
        total = 0.0
        for seg in self.segments:
            if t <= seg.start:
                break
            total += seg.count(t - seg.start)
        return total

    def count_before(self, t: float) -> int:
        """How many requests are due strictly before time t (the k with t_k < t)."""
        if t <= 0:
            return 0
        return min(_ceil(self.cumulative(t)), self.total)

    @property
    def total(self) -> int:
        return _ceil(self.cumulative(self.duration))

    @property
    def mean_rps(self) -> float:
        return self.total / self.duration

    def rate_at(self, t: float) -> float:
        for seg in self.segments:
            if seg.start <= t < seg.start + seg.length:
                return seg.rate0 + (seg.rate1 - seg.rate0) * (t - seg.start) / seg.length
        return 0.0

    def targets_per_second(self) -> list[int]:
        """Requests due in each second [s, s+1) of the run: the timeline's `target_rps`."""
        seconds = math.ceil(self.duration - 1e-9)
        before = [self.count_before(float(s)) for s in range(seconds + 1)]
        before[-1] = self.total
        return [before[s + 1] - before[s] for s in range(seconds)]

    def times(self, first: int, step: int) -> TimeIterator:
        """Due times of requests first, first+step, first+2*step, ... (one worker's share)."""
        return TimeIterator(self, first, step)


class TimeIterator:
    """Yields the due times (seconds from the start) of every `step`-th request, in order."""

    def __init__(self, profile: Profile, first: int, step: int) -> None:
        self.segments = profile.segments
        self.fulls = [seg.count(seg.length) for seg in profile.segments]  # requests per segment
        self.total = profile.total
        self.k = first
        self.step = step
        self.index = 0
        self.base = 0.0  # requests due before the current segment
        self.end = self.fulls[0]  # ... and up to the end of it
        self._load()

    def _load(self) -> None:
        """Cache the current segment's numbers: next() runs once per request."""
        seg = self.segments[self.index]
        self.start = seg.start
        self.length = seg.length
        self.rate = seg.rate0 if seg.rate0 == seg.rate1 else 0.0  # constant: t = n / rate
        self.seg = seg

    def next(self) -> float | None:
        """The next due time, or None when the share is exhausted."""
        k = self.k
        if k >= self.total:
            return None
        self.k = k + self.step
        while k >= self.end and self.index < len(self.segments) - 1:
            self.base = self.end
            self.index += 1
            self.end += self.fulls[self.index]
            self._load()
        n = k - self.base
        u = n / self.rate if self.rate else self.seg.time_at(n)
        return self.start + (u if u < self.length else self.length)


def _ceil(x: float) -> int:
    # float integrals such as 300 * 10.000000000000002: an epsilon keeps exact counts exact
    return max(math.ceil(x - 1e-6), 0)


def build_profile(
    *,
    rps: float | None,
    duration: float | None,
    rps_start: float | None,
    rps_max: float | None,
    ramp_up: float | None,
    spike_rps: float | None,
    spike_duration: float | None,
) -> Profile:
    """The profile the §3.7 flags describe, or a ScheduleError naming the conflict.

    constant  --rps R [--duration D]                         D defaults to 60s
    ramp      --rps-start A --rps-max B --ramp-up T [--duration D]
              linear from A to B over T, then B until D (D defaults to T)
    spike     --rps R --spike-rps S --spike-duration P [--duration D]
              R, with S for P centred in D (D defaults to 3 * P)
    """
    for name, value in (("--rps", rps), ("--rps-start", rps_start), ("--rps-max", rps_max)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ScheduleError(f"{name} must be a rate above 0, got {value:g}")
    if spike_rps is not None and not (math.isfinite(spike_rps) and spike_rps > 0):
        raise ScheduleError(f"--spike-rps must be a rate above 0, got {spike_rps:g}")
    ramp = [n for n, v in (("--rps-start", rps_start), ("--rps-max", rps_max), ("--ramp-up", ramp_up)) if v]
    spike = [n for n, v in (("--spike-rps", spike_rps), ("--spike-duration", spike_duration)) if v]
    if ramp:
        if rps is not None or spike:
            other = "--rps" if rps is not None else spike[0]
            raise ScheduleError(f"{ramp[0]} (a ramp) cannot be combined with {other}")
        if len(ramp) < 3:
            missing = [n for n in ("--rps-start", "--rps-max", "--ramp-up") if n not in ramp]
            raise ScheduleError(
                f"a ramp needs --rps-start, --rps-max and --ramp-up (missing {', '.join(missing)})"
            )
        assert rps_start is not None and rps_max is not None and ramp_up is not None
        total = duration if duration is not None else ramp_up
        if total < ramp_up:
            raise ScheduleError(
                f"--duration {format_duration(total)} is shorter than --ramp-up {format_duration(ramp_up)}"
            )
        ramp_segs = [Segment(0.0, ramp_up, rps_start, rps_max)]
        if total > ramp_up:
            ramp_segs.append(Segment(ramp_up, total - ramp_up, rps_max, rps_max))
        desc = f"ramp {rps_start:g} -> {rps_max:g} req/s over {format_duration(ramp_up)}"
        if total > ramp_up:
            desc += f", then {rps_max:g} req/s until {format_duration(total)}"
        return Profile("ramp", tuple(ramp_segs), desc)
    if rps is None:
        raise ScheduleError("give a rate: --rps R, or a ramp with --rps-start, --rps-max and --ramp-up")
    if spike:
        if len(spike) < 2:
            absent = "--spike-duration" if spike_duration is None else "--spike-rps"
            raise ScheduleError(f"a spike needs --spike-rps and --spike-duration (missing {absent})")
        assert spike_rps is not None and spike_duration is not None
        total = duration if duration is not None else 3 * spike_duration
        if spike_duration >= total:
            raise ScheduleError(
                f"--spike-duration {format_duration(spike_duration)} must be shorter than "
                f"--duration {format_duration(total)} (the spike is centred in the run)"
            )
        before = (total - spike_duration) / 2
        segs = (
            Segment(0.0, before, rps, rps),
            Segment(before, spike_duration, spike_rps, spike_rps),
            Segment(before + spike_duration, total - before - spike_duration, rps, rps),
        )
        desc = (
            f"spike: {rps:g} req/s for {format_duration(total)} with {spike_rps:g} req/s "
            f"from {format_duration(before)} to {format_duration(before + spike_duration)}"
        )
        return Profile("spike", segs, desc)
    total = duration if duration is not None else 60.0
    return Profile(
        "constant", (Segment(0.0, total, rps, rps),), f"{rps:g} req/s for {format_duration(total)}"
    )
