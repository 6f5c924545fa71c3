"""Histograms kept in Redis, so that every process (API, chat and pool workers) adds to
the same figures and the API's /metrics reports them all. Counters are the pool stats
in PoolState; gauges are read from the state itself.

One observation is one pipelined round trip: the bucket it falls in, the count and the
sum; buckets are made cumulative when read. Histograms named in RECENT are also kept per
slot of SLOT_S seconds for RECENT_KEEP_S (the pool page's charts of the last minutes). A
short log per pool holds the latest boots and failed boots (a capped stream).
"""

import bisect
import math
import time

from redis import Redis

from .keys import Keys

HISTOGRAMS = {  # name -> (help, bucket upper bounds)
    "claim_wait_seconds": ("How long a new session waited for a container (0 when one was idle)",
                           (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)),
    "boot_seconds": ("From a container's create call to its first healthy answer",
                     (0.25, 0.5, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 30, 60, 120, 300)),
    "job_latency_seconds": ("From a job's submission to its end",
                            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)),
    "reconcile_duration_seconds": ("One reconcile pass over one pool",
                                   (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)),
}

RECENT = ("claim_wait_seconds",)  # kept per slot too
SLOT_S = 10
RECENT_KEEP_S = 15 * 60
EVENTS_KEPT = 200  # about: the stream is trimmed approximately


class Metrics:
    def __init__(self, redis: Redis, deployment: str):
        self.redis = redis
        self.keys = Keys(deployment)

    def observe(self, name: str, pool: str, value: float) -> None:
        bucket = bisect.bisect_left(HISTOGRAMS[name][1], value)  # len(buckets) is +Inf
        keys = [self.keys.histogram(name, pool)]
        if name in RECENT:
            keys.append(self.keys.recent(name, pool, int(time.time() // SLOT_S)))
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hincrby(key, str(bucket), 1)
                pipe.hincrby(key, "count", 1)
                pipe.hincrbyfloat(key, "sum", value)
            if name in RECENT:
                pipe.expire(keys[1], RECENT_KEEP_S + SLOT_S)
            pipe.execute()

    def histogram(self, name: str, pool: str) -> tuple[list[tuple[float, int]], float, int]:
        """([(upper bound, cumulative count), ..., (inf, count)], sum, count)."""
        return cumulative(name, self.redis.hgetall(self.keys.histogram(name, pool)))

    def recent(self, name: str, pool: str, seconds: float) -> list[tuple[float, list[tuple[float, int]], int]]:
        """The histogram per slot over the last `seconds`, oldest first: (slot start,
        cumulative buckets, count) for each slot, empty ones included."""
        last = int(time.time() // SLOT_S)
        slots = range(last - int(seconds // SLOT_S) + 1, last + 1)
        with self.redis.pipeline(transaction=False) as pipe:
            for slot in slots:
                pipe.hgetall(self.keys.recent(name, pool, slot))
            found = pipe.execute()
        return [(slot * SLOT_S, *_without_sum(cumulative(name, fields))) for slot, fields in zip(slots, found)]

    def event(self, pool: str, kind: str, container: str, seconds: float) -> None:
        """Log a boot ("booted", seconds it took) or a failed one ("failed", seconds it lived)."""
        self.redis.xadd(self.keys.pool(pool, "events"), {"kind": kind, "container": container,
                                                         "seconds": f"{seconds:.3f}", "at": repr(time.time())},
                        maxlen=EVENTS_KEPT, approximate=True)

    def events(self, pool: str, count: int) -> list[dict[str, str]]:
        """The latest `count` entries of the pool's log, newest first."""
        return [fields for _, fields in self.redis.xrevrange(self.keys.pool(pool, "events"), count=count)]


def cumulative(name: str, fields: dict[str, str]) -> tuple[list[tuple[float, int]], float, int]:
    """A stored histogram's hash as ([(upper bound, cumulative count), ..., (inf, count)], sum, count)."""
    bounds = (*HISTOGRAMS[name][1], math.inf)
    running, buckets = 0, []
    for index, bound in enumerate(bounds):
        running += int(fields.get(str(index), 0))
        buckets.append((bound, running))
    return buckets, float(fields.get("sum", 0)), int(fields.get("count", 0))


def _without_sum(histogram: tuple[list[tuple[float, int]], float, int]) -> tuple[list[tuple[float, int]], int]:
    return histogram[0], histogram[2]


def quantile(buckets: list[tuple[float, int]], q: float) -> float | None:
    """The upper bound of the bucket holding the q-quantile (the last finite bound for the
    +Inf bucket); None when there are no observations."""
    total = buckets[-1][1]
    if not total:
        return None
    for bound, count in buckets:
        if count >= q * total:
            return bound if math.isfinite(bound) else buckets[-2][0]
    return None
