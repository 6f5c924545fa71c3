"""What clients and operators may read of pools and sessions: from Redis alone, with no
runtime and no writes. The API, /metrics and `greenroom pool status` hold this, not a
PoolManager."""

import time

from redis import Redis

from .engines import Engines
from .line import WaitingLine
from .metrics import Metrics
from .schemas import OldContainers, PoolStatus, Target
from .settings import Settings
from .sizing import Sizer
from .specs import PoolSpecs
from .state import DEGRADED_AFTER, PoolState


class PoolOverview:
    def __init__(self, settings: Settings, redis: Redis):
        self.settings = settings
        self._state = PoolState(redis, settings.deployment)
        self._specs = PoolSpecs(settings, self._state)
        self._metrics = Metrics(redis, settings.deployment)
        self._line = WaitingLine(redis, self._state.keys, settings.line_max_age_s)
        self._engines = Engines(redis, self._state.keys, settings, self._state, request=lambda pool, engine: None)
        self._sizer = Sizer(redis, self._state.keys, self._metrics)

    @property
    def pools(self) -> list[str]:
        return list(self.settings.pools)

    def status(self, pool: str) -> PoolStatus:
        """Raises UnknownPool."""
        target, counts = self.target(pool), self._state.counts(pool)
        stats, info = self._state.stats(pool), self._state.info(pool)
        runtime_error = info.get("runtime_error") or None
        degraded = stats.get("consecutive_failures", 0) >= DEGRADED_AFTER
        current = self.spec_hash(pool)
        old = OldContainers(warming=0, idle=0, assigned=0)
        for state, made_from in self._state.spec_hashes(pool).values():
            if made_from != current:
                old = old.model_copy(update={state: getattr(old, state) + 1})
        rolling = old.warming + old.idle + old.assigned > 0
        return PoolStatus(name=pool, runtime=info.get("runtime") or self.settings.pools[pool].runtime,
                          target_idle=target.idle, max_total=target.max_total, **counts, failed=stats.get("failed", 0),
                          booted=stats.get("booted", 0), degraded=degraded or runtime_error is not None,
                          runtime_error=runtime_error, engines=self._engines.status(pool, runtime_error),
                          target=target, spec_hash=current, old=old,
                          rollout="none" if not rolling else "stopped" if degraded else "rolling",
                          idle_container_seconds=self.idle_seconds(pool, stats))

    def target(self, pool: str) -> Target:
        """The idle target now and where it comes from. Raises UnknownPool."""
        self._specs.configured(pool)
        return self._specs.target(pool, self._sizer.last(pool))

    def spec_hash(self, pool: str) -> str:
        """What the workers make new containers from: as their last pass said (their
        configuration is the one that counts), else as this process's reads it."""
        return self._state.info(pool).get("spec_hash") or self._specs.spec_hash(pool)

    def idle_seconds(self, pool: str, stats: dict | None = None) -> float:
        """Container-seconds spent idle: those ended (counted as each left idle) and those
        running now."""
        stats = self._state.stats(pool) if stats is None else stats
        now = time.time()
        return stats.get("idle_seconds", 0.0) + sum(max(0.0, now - since) for since in self._state.idle_since(pool))

    def sizing_inputs(self, pool: str) -> tuple[float, float]:
        """(arrivals per second, boot time in seconds) as the sizing takes them (sizing.py)."""
        return self._sizer.inputs(pool, self._specs.effective(pool))

    def waiting(self, pool: str) -> int:
        """Jobs in the pool's line (those older than the longest wait do not count)."""
        return self._line.size(pool)

    def stats(self, pool: str) -> dict[str, int]:
        return self._state.stats(pool)

    def histogram(self, name: str, pool: str) -> tuple[list[tuple[float, int]], float, int]:
        return self._metrics.histogram(name, pool)

    def session(self, session_id: str) -> dict[str, str]:
        return self._state.session(session_id)

    def reconciled_at(self, pool: str) -> float | None:
        """When the pool's last reconcile pass ended (the maintenance worker's heartbeat)."""
        return float(self._state.info(pool).get("reconciled_at") or 0) or None

    def place(self, pool: str, tenant: str, job_id: str) -> int:
        """A job's 1-based place in the pool's line now, 0 if it is not in line (the line's
        script drops stale entries as it counts)."""
        return self._line.place(pool, tenant, job_id)

    def line(self, pool: str) -> list[tuple[str, str, float]]:
        """The pool's line in the fair order: (job id, tenant, joined at)."""
        return self._line.in_order(pool)

    def tenant_load(self, tenant: str) -> dict[str, int]:
        """What a tenant holds now: active sessions, and jobs submitted and not yet final."""
        with self._state.redis.pipeline(transaction=False) as pipe:
            pipe.scard(self._state.keys.tenant(tenant, "sessions"))
            pipe.zcard(self._state.keys.tenant(tenant, "jobs"))
            sessions, jobs = pipe.execute()
        return {"sessions": sessions, "jobs_in_flight": jobs}
