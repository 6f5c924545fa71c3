"""What clients and operators may read of pools and sessions: from Redis alone, with no
runtime and no writes. The API, /metrics and `greenroom pool status` hold this, not a
PoolManager."""

from redis import Redis

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
                          runtime_error=runtime_error)

    def waiting(self, pool: str) -> int:
        """Jobs in the pool's line (those older than the longest wait do not count)."""
        return self._state.waiting(pool, self.settings.claim_timeout_s)

    def stats(self, pool: str) -> dict[str, int]:
        return self._state.stats(pool)

    def histogram(self, name: str, pool: str) -> tuple[list[tuple[float, int]], float, int]:
        return self._metrics.histogram(name, pool)

    def session(self, session_id: str) -> dict[str, str]:
        return self._state.session(session_id)
