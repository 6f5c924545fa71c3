"""A pool that sizes itself: `target_idle = "auto"`.

The rule. A claim takes an idle container and starts its replacement at once, which is
idle again one boot time T later. So an arrival finds a container idle exactly when fewer
than k replacements are on their way, k being the idle target; those are the arrivals of
the last T, Poisson(rate x T) for Poisson arrivals (an M/D/inf queue). The target is the
smallest k that the arrivals of one boot time, the arriving one included, exceed with
probability at most 1 - warm_goal:

    k = min { k : P(Poisson(rate x T) >= k) <= 1 - warm_goal }   (0 when the rate is 0)

held within min_idle..max_idle (and max_total); the jobs already waiting in line are
demand on top of it (reconcile.py), as for a fixed target.

Its inputs, both observed and kept in Redis (so every worker sees the same):

- rate: new sessions per second. Each new session's first claim is recorded once (its
  job id in a sorted set, scored by time: state.py's claim script). The rate is the
  count over `arrival_window_s` (60 s) divided by it; a short window of a tenth of that
  (6 s, as Knative's panic window is a tenth of its stable window) takes over while it
  shows significantly more arrivals than the long rate predicts (a Poisson tail below
  SHORT_ALPHA), so a step up in load is followed within seconds. Bursts: in the short
  window the busiest second counts only as much as the second busiest, so a burst within
  one second never sets the short rate; in the long one a burst of n raises the rate by
  n / 60 s for a minute. Quiet spells: the rate falls as the window empties, and a lower
  target waits out the cooldown.
- T: the 90th percentile of the pool's last BOOTS boot times (create call to idle, from
  its log of boots, metrics.py), so boots slowed by load count; DEFAULT_BOOT_S before the
  pool's first boot.

Scaling down waits out `scale_down_cooldown_s` (60 s): the target is the largest long-
window figure of that long (as Kubernetes' HPA stabilization window), and a short-window
figure counts for one short window after it was last seen. Every pass records its
figures (the `sizing` hash) for readers: pool status, GET /v1/pools, /metrics, the pool
page.
"""

import math
import time
from dataclasses import asdict, dataclass

from redis import Redis

from .keys import Keys
from .metrics import Metrics
from .settings import PoolSpec

SHORT_FRACTION = 0.1  # the short window, of arrival_window_s
SHORT_ALPHA = 0.05  # the short window counts when the long rate makes its count this unlikely
BOOTS = 20  # the latest boots the boot time is taken from
BOOT_QUANTILE = 0.9
DEFAULT_BOOT_S = 10.0  # before a pool's first boot
MAX_ARRIVALS_KEPT = 50_000  # per pool: beyond it the oldest are dropped (rates over 800/s read low)


def poisson_cdf(k: int, mean: float) -> float:
    """P(X <= k) for X ~ Poisson(mean)."""
    if k < 0:
        return 0.0
    if mean <= 0:
        return 1.0
    log_term = -mean  # in logs: exp(-mean) underflows for large means
    total = math.exp(log_term)
    for i in range(1, k + 1):
        log_term += math.log(mean / i)
        total += math.exp(log_term)
    return min(total, 1.0)


def idle_for(rate: float, boot_s: float, warm_goal: float, ceiling: int = 10_000) -> int:
    """The smallest k with P(Poisson(rate x boot_s) >= k) <= 1 - warm_goal; 0 for no
    arrivals; at most ceiling."""
    mean = rate * boot_s
    if mean <= 0:
        return 0
    k = min(max(1, int(mean)), ceiling)  # the answer is about the mean or more: start near it
    while k > 1 and poisson_cdf(k - 2, mean) >= warm_goal:
        k -= 1
    while k < ceiling and poisson_cdf(k - 1, mean) < warm_goal:
        k += 1
    return k


def trimmed_count(times: list[float]) -> int:
    """Arrivals, the busiest second counted only as much as the second busiest."""
    per_second: dict[int, int] = {}
    for t in times:
        per_second[int(t)] = per_second.get(int(t), 0) + 1
    busiest = sorted(per_second.values(), reverse=True) + [1]
    return sum(busiest[:-1]) - (busiest[0] - busiest[1]) if per_second else 0


def quantile(values: list[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class Sizing:
    """One decision and what it came from (the `sizing` hash; the figures readers show)."""

    at: float
    idle: int  # the target: held, within min_idle..max_idle
    rate_per_s: float  # the rate used: the long one, or the short one when it counted
    long_rate_per_s: float
    short_rate_per_s: float
    short_counted: bool  # the short window's rate set the figure (a step up seen)
    boot_s: float  # T: the boot time's BOOT_QUANTILE
    boots: int  # how many boots T comes from (0: DEFAULT_BOOT_S)
    computed: int  # k from this pass's rate and T
    held: int  # the highest figure of the cooldown (>= computed while scaling down waits)
    warm_goal: float
    min_idle: int
    max_idle: int
    window_s: float
    cooldown_s: float

    def record(self) -> dict[str, str]:
        return {k: repr(v) if isinstance(v, float) else str(int(v)) for k, v in asdict(self).items()}

    @classmethod
    def from_record(cls, fields: dict[str, str]) -> "Sizing | None":
        try:
            return cls(**{name: field.type(int(fields[name])) if field.type is bool else field.type(fields[name])
                          for name, field in cls.__dataclass_fields__.items()})
        except (KeyError, ValueError):
            return None  # none yet, or written by another version


class Sizer:
    """Decides auto targets in the reconcile (the pool worker) and keeps what it decided
    for readers. Reads: the arrivals, the log of boots, the figures of the cooldown."""

    def __init__(self, redis: Redis, keys: Keys, metrics: Metrics):
        self.redis, self.keys, self.metrics = redis, keys, metrics

    def decide(self, pool: str, spec: PoolSpec, now: float | None = None) -> Sizing:
        now = time.time() if now is None else now
        long_s = spec.arrival_window_s
        short_s = long_s * SHORT_FRACTION
        long_count, short_times = self._arrivals(pool, now, long_s, short_s)
        boot_s, boots = self.boot_time(pool)
        long_rate = long_count / long_s
        short_count = trimmed_count(short_times)
        short_counted = short_count > 0 and 1 - poisson_cdf(short_count - 1, long_rate * short_s) < SHORT_ALPHA
        ceiling = spec.max_idle if spec.max_idle is not None else spec.max_total
        ceiling = min(ceiling, spec.max_total)
        long_k = idle_for(long_rate, boot_s, spec.warm_goal, ceiling)
        short_k = idle_for(short_count / short_s, boot_s, spec.warm_goal, ceiling) if short_counted else 0
        held = self._held(pool, now, long_k, short_k, spec.scale_down_cooldown_s, short_s)
        sizing = Sizing(at=now, idle=min(max(held, spec.min_idle), ceiling),
                        rate_per_s=max(long_rate, short_count / short_s) if short_counted else long_rate,
                        long_rate_per_s=long_rate, short_rate_per_s=short_count / short_s, short_counted=short_counted,
                        boot_s=boot_s, boots=boots, computed=max(long_k, short_k), held=held,
                        warm_goal=spec.warm_goal, min_idle=spec.min_idle, max_idle=ceiling, window_s=long_s,
                        cooldown_s=spec.scale_down_cooldown_s)
        self.redis.hset(self.keys.pool(pool, "sizing"), mapping=sizing.record())
        return sizing

    def last(self, pool: str) -> Sizing | None:
        """The last decision, for readers."""
        return Sizing.from_record(self.redis.hgetall(self.keys.pool(pool, "sizing")))

    def forget(self, pool: str, spec: PoolSpec, now: float | None = None) -> None:
        """A fixed target (again): no figures to show or hold; the arrivals are trimmed
        all the same (to the window), as they are recorded for every pool."""
        now = time.time() if now is None else now
        self._arrivals(pool, now, spec.arrival_window_s, 0)
        self.redis.delete(self.keys.pool(pool, "sizing"), self.keys.pool(pool, "sizing-history"))

    def inputs(self, pool: str, spec: PoolSpec) -> tuple[float, float]:
        """(arrival rate, boot time) as the sizing would take them now (a read only): those
        it last used for an auto pool, else the long window's rate and the boots' p90."""
        if spec.target_idle == "auto" and (sizing := self.last(pool)):
            return sizing.rate_per_s, sizing.boot_s
        now = time.time()
        count = self.redis.zcount(self.keys.pool(pool, "arrivals"), now - spec.arrival_window_s, now)
        return count / spec.arrival_window_s, self.boot_time(pool)[0]

    def boot_time(self, pool: str) -> tuple[float, int]:
        """(T, how many boots it comes from): the BOOT_QUANTILE of the latest BOOTS boots."""
        boots = [float(e["seconds"]) for e in self.metrics.events(pool, 10 * BOOTS) if e.get("kind") == "booted"]
        boots = boots[:BOOTS]
        return (quantile(boots, BOOT_QUANTILE), len(boots)) if boots else (DEFAULT_BOOT_S, 0)

    def _arrivals(self, pool: str, now: float, long_s: float, short_s: float) -> tuple[int, list[float]]:
        """Arrivals within long_s (a count) and within short_s (their times); drops older."""
        key = self.keys.pool(pool, "arrivals")
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(key, "-inf", f"({now - long_s}")
            pipe.zremrangebyrank(key, 0, -MAX_ARRIVALS_KEPT - 1)
            pipe.zcount(key, now - long_s, now)
            pipe.zrangebyscore(key, now - short_s, now, withscores=True) if short_s else pipe.ping()
            _, _, count, recent = pipe.execute()
        return count, [score for _, score in recent] if short_s else []

    def _held(self, pool: str, now: float, long_k: int, short_k: int, cooldown_s: float, short_s: float) -> int:
        """The highest long figure of the cooldown and short figure of one short window,
        this pass's included."""
        key = self.keys.pool(pool, "sizing-history")
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {f"{now!r}:long:{long_k}": now, **({f"{now!r}:short:{short_k}": now} if short_k else {})})
            pipe.zremrangebyscore(key, "-inf", f"({now - max(cooldown_s, short_s)}")
            pipe.zrangebyscore(key, now - max(cooldown_s, short_s), "+inf", withscores=True)
            entries = pipe.execute()[2]
        held = max(long_k, short_k)
        for member, at in entries:
            _, kind, k = member.rsplit(":", 2)
            if at >= now - (cooldown_s if kind == "long" else short_s):
                held = max(held, int(k))
        return held
