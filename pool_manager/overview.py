"""What clients and operators may read of pools and sessions: from Redis alone, with no
runtime and no writes. The API, /metrics and `greenroom pool status` hold this, not a
PoolManager."""

from redis import Redis

from .engines import Engines
from .line import WaitingLine
from .metrics import Metrics
from .schemas import PoolStatus
from .settings import Settings
from .specs import PoolSpecs
from .state import PoolState

DEGRADED_AFTER = 3  # consecutive failed boots


class PoolOverview:
    def __init__(self, settings: Settings, redis: Redis):
        self.settings = settings
        self._state = PoolState(redis, settings.deployment)
        self._specs = PoolSpecs(settings, self._state)
        self._metrics = Metrics(redis, settings.deployment)
        self._line = WaitingLine(redis, self._state.keys, settings.line_max_age_s)
        self._engines = Engines(redis, self._state.keys, settings, self._state, request=lambda pool, engine: None)

    @property
    def pools(self) -> list[str]:
        return list(self.settings.pools)

    def status(self, pool: str) -> PoolStatus:
        """Raises UnknownPool."""
        spec, counts = self._specs.effective(pool), self._state.counts(pool)
        stats, info = self._state.stats(pool), self._state.info(pool)
        runtime_error = info.get("runtime_error") or None
        return PoolStatus(name=pool, runtime=info.get("runtime") or spec.runtime, target_idle=spec.target_idle,
                          max_total=spec.max_total, **counts, failed=stats.get("failed", 0),
                          booted=stats.get("booted", 0),
                          degraded=stats.get("consecutive_failures", 0) >= DEGRADED_AFTER or runtime_error is not None,
                          runtime_error=runtime_error, engines=self._engines.status(pool, runtime_error))

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
