"""Histograms kept in Redis, so that every process (API, chat and pool workers) adds to
the same figures and the API's /metrics reports them all. Counters are the pool stats
in PoolState; gauges are read from the state itself.

One observation is one pipelined round trip: the bucket it falls in, the count and the
sum; buckets are made cumulative when read.
"""

import bisect
import math

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


class Metrics:
    def __init__(self, redis: Redis, deployment: str):
        self.redis = redis
        self.keys = Keys(deployment)

    def observe(self, name: str, pool: str, value: float) -> None:
        bucket = bisect.bisect_left(HISTOGRAMS[name][1], value)  # len(buckets) is +Inf
        key = self.keys.histogram(name, pool)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(key, str(bucket), 1)
            pipe.hincrby(key, "count", 1)
            pipe.hincrbyfloat(key, "sum", value)
            pipe.execute()

    def histogram(self, name: str, pool: str) -> tuple[list[tuple[float, int]], float, int]:
        """([(upper bound, cumulative count), ..., (inf, count)], sum, count)."""
        fields = self.redis.hgetall(self.keys.histogram(name, pool))
        bounds = (*HISTOGRAMS[name][1], math.inf)
        running, buckets = 0, []
        for index, bound in enumerate(bounds):
            running += int(fields.get(str(index), 0))
            buckets.append((bound, running))
        return buckets, float(fields.get("sum", 0)), int(fields.get("count", 0))
