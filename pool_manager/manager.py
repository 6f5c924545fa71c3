"""PoolManager: the one entry point to pools for the workers, which run them: claims,
session ends and reconcile passes. (Readers hold a PoolOverview instead.)"""

import logging
import secrets
import time
from collections.abc import Callable
from contextlib import contextmanager

from redis import Redis, RedisError

from .engine_pass import EnginePass, PoolWidePass
from .engines import LOST, Engines
from .errors import ConfigError, ContainerLost, RuntimeFailure, SessionClosed, SessionModelMismatch
from .handoff import HandOff
from .httpclient import is_healthy
from .jobs import JobStore
from .lifecycle import Lifecycle
from .line import WaitingLine
from .metrics import Metrics
from .ports import PortAllocator
from .reconcile import ReconcilePass, ReconcileReport
from .runtimes import Runtime, runtime_class
from .settings import Settings
from .sizing import Sizer
from .specs import PoolSpecs
from .state import Claim, Container, PoolState, Refusal, connect_redis

log = logging.getLogger(__name__)
LOCK_TTL_S = 120  # longer than any pass; a crashed holder's lock lapses after it


class PoolManager:
    def __init__(self, settings: Settings, redis: Redis | None = None,
                 resume: Callable[[str, dict], None] | None = None,
                 engine_work: Callable[[str, str], None] = lambda pool, engine: None):
        """resume(job_id, kwargs) sends a parked job that was handed a container back to a
        worker (handoff.py); without it, this manager hands nothing off. engine_work(pool,
        engine) asks that engine's worker for an engine pass (engines.py)."""
        self.settings = settings
        self.redis = redis or connect_redis(settings.redis_url)
        self.state = PoolState(self.redis, settings.deployment)
        self.specs = PoolSpecs(settings, self.state)
        self.jobs = JobStore(self.redis, settings.deployment, result_ttl_s=settings.result_ttl_s)
        self.line = WaitingLine(self.redis, self.state.keys, settings.line_max_age_s)
        self.handoff = resume and HandOff(self.redis, self.state.keys, self.jobs, settings.claim_timeout_s,
                                          settings.line_max_age_s, settings.job_lease_s, resume)
        self.metrics = Metrics(self.redis, settings.deployment)
        engines = settings.engine_specs
        self.engine = settings.own_engine  # the engine this process drives (None: none)
        self.engine_work = engine_work
        self.engines = (Engines(self.redis, self.state.keys, settings, self.state, engine_work)
                        if len(engines) > 1 else None)  # one engine: as on a single machine
        ports = PortAllocator(self.redis, settings.port_range,
                              {name: spec.port_range for name, spec in engines.items() if spec.port_range})
        self.lifecycle = Lifecycle(self.state, ports, self.metrics, settings.boot_backoff_s,
                                   on_idle=self._became_idle,
                                   on_elsewhere=lambda container: engine_work(container.pool, container.engine))
        self.sizer = Sizer(self.redis, self.state.keys, self.metrics)
        self._runtimes: dict[str, Runtime] = {}
        self._resolved: dict[str, str] = {}  # pool -> runtime name

    # runtimes
    def runtime_name(self, pool: str) -> str:
        """The pool's runtime, resolved once: "auto" is docker where an engine answers,
        else process. The choice is recorded for status readers that hold no runtime."""
        if pool not in self._resolved:
            spec = self.settings.pools[pool]
            name = spec.runtime
            if name == "auto":
                name = "docker" if spec.image and (self.engines or self.runtime("docker").ping()) else "process"
            self.state.set_info(pool, runtime=name)
            self._resolved[pool] = name
        return self._resolved[pool]

    def runtime(self, name: str) -> Runtime:
        if name not in self._runtimes:
            self._runtimes[name] = runtime_class(name)(self.settings.deployment, **self._runtime_options(name))
        return self._runtimes[name]

    def _runtime_options(self, name: str) -> dict:
        settings = self.settings
        if self.engine is None:
            raise ConfigError("this process drives no engine: run it with --engine (engines.py)")
        engine = settings.engine_specs[self.engine]
        return {"docker": {"docker_host": engine.docker_host, "engine": self.engine, "address": engine.address},
                "process": {"state_dir": settings.state_dir},
                "kubernetes": {"namespace": settings.kubernetes_namespace, "kubeconfig": settings.kubeconfig},
                }.get(name, {})

    def pool_runtime(self, pool: str) -> Runtime:
        """The pool's runtime on the engine this process drives."""
        return self.runtime(self.runtime_name(pool))

    def runtime_for(self, container: Container) -> Runtime | None:
        """The runtime that can reach the container, if this process drives its engine."""
        return self.pool_runtime(container.pool) if container.engine == self.engine else None

    # sessions
    def claim(self, pool: str, session_id: str, job_id: str = "") -> Claim | None:
        """The session's container: its own if it has one, else an idle one once no job
        waits ahead of this one, atomically (the job, if it waited in line, leaves it in
        the same step). None: none for this job yet (wait, and claim again). Raises
        SessionClosed, ContainerLost or SessionModelMismatch."""
        lease_s = self.specs.configured(pool).session_idle_ttl_s  # not scalable: no read of the overrides
        result = self.state.claim(pool, session_id, lease_s, self.settings.line_max_age_s, job_id)
        if result is Refusal.EMPTY:
            return None
        if isinstance(result, Refusal):
            why = self.state.session(session_id).get("why")
            if result is Refusal.BROKEN and (why or "").startswith(LOST):  # its container or engine was lost
                raise ContainerLost(f"session {session_id!r} is broken: {why}")
            raise SessionClosed(f"session {session_id!r} is {result.value}" + (f": {why}" if why else ""))
        if result.container.pool != pool:
            raise SessionModelMismatch(f"session {session_id!r} talks to model {result.container.pool!r}")
        return result

    def renew(self, claim: Claim) -> bool:
        return self.state.renew_lease(claim.container, claim.lease_s)

    def close_session(self, session_id: str, reason: str = "closed", why: str = "") -> bool:
        """End a session (why: told to its next message): its container is destroyed, or
        back to idle when the pool recycles and it is healthy. False when there was no
        active session."""
        session = self.state.session(session_id)
        if session.get("state") != "active":
            return False
        self.state.end_session(session_id, reason, why=why)
        container = self.state.get(session["container"])
        if container is None:
            return True
        spec = self.specs.configured(container.pool)
        current = container.spec_hash == self.specs.spec_hash(container.pool)  # else a rollout replaces it
        if spec.recycle and current and is_healthy(container.endpoint, spec.health_path):
            if self.state.move(container, "assigned", "idle"):
                self.state.detach_session(container.id)
                self.hand_off(container.pool)
                return True
        if self.state.move(container, "assigned", None):
            self.lifecycle.destroy(container, self.runtime_for(container))
        return True

    def park(self, pool: str, tenant: str, job_id: str, delivery: str) -> int:
        """Park a job that found no container in the pool's line (handoff.py): its place, or
        0 when the delivery no longer holds it. Someone must hand off after (a reconcile)."""
        return self.handoff.park(pool, tenant, job_id, delivery)

    def hand_off(self, pool: str) -> list[str]:
        """Give the pool's idle containers to the jobs parked in its line, head first, and
        send them again; fail those past their deadline. The ids sent."""
        if self.handoff is None:
            return []
        return self.handoff.run(pool, self.specs.configured(pool).session_idle_ttl_s)

    # reconcile
    def _became_idle(self, pool: str) -> None:
        """A container of the pool turned idle: hand it to a parked job; and during a
        rollout an old idle one may go now, not at the next tick (a pass decides)."""
        self.hand_off(pool)
        if int(self.state.info(pool).get("old") or 0):
            try:
                self.reconcile(pool)
            except (RuntimeFailure, RedisError) as exc:  # the periodic reconcile takes over
                log.warning("pool %s: reconcile after a container turned idle failed: %s", pool, exc)

    def reconcile(self, pool: str) -> ReconcileReport | None:
        """Run a pass under the pool's lock. If a pass is already running, flag it to run
        once more instead of waiting, so a request is never lost behind the lock."""
        name = f"reconcile:{pool}"
        self.state.flag(name)
        report = None
        while True:
            token = secrets.token_hex(8)
            if not self.state.try_lock(name, token, LOCK_TTL_S):
                return report
            try:
                self.state.take_flag(name)
                report = self._pass(pool)
            finally:
                self.state.unlock(name, token)
            if not self.state.take_flag(name):
                return report

    def _pass(self, pool: str) -> ReconcileReport:
        """One pass; a runtime that fails it is recorded for status readers until one succeeds.
        With several engines, first the lost ones' containers leave service (engines.py)."""
        spec_hash = self.specs.spec_hash(pool)
        args = (pool, self.specs.effective(pool), self.pool_runtime(pool), self.state, self.lifecycle,
                self.close_session, self.line, self.sizer, spec_hash, self.engines)
        if self.engines:
            self.engines.declare_lost(pool)
        try:
            with self._engine_lock(pool):
                report = ReconcilePass(*args).run()
        except RuntimeFailure as exc:
            if not self.engines:
                self.state.set_info(pool, runtime_error=str(exc)[:500], reconciled_at=repr(time.time()),
                                    spec_hash=spec_hash)
                raise
            self.engines.failed(self.engine, str(exc))  # this engine is down: the others carry the pool
            log.warning("pool %s: engine %s failed: %s", pool, self.engine, exc)
            report = PoolWidePass(*args).run()
        else:
            if self.engines:
                self.engines.seen(self.engine, pool)
        if self.engines:
            for engine in self.engines.specs:  # each engine's worker lists the pool about once an interval
                if engine != self.engine and self.engines.wants_pass(pool, engine, self.settings.reconcile_interval_s):
                    self.engine_work(pool, engine)
        # the maintenance heartbeat, and what new containers are made from (for readers)
        self.state.set_info(pool, runtime_error="", reconciled_at=repr(time.time()), spec_hash=spec_hash,
                            old=report.old)
        self.metrics.observe("reconcile_duration_seconds", pool, report.duration_s)
        self.hand_off(pool)  # the safety net: containers adopted, or turned idle while no one handed off
        return report

    def engine_pass(self, pool: str, asked_at: float = 0.0) -> ReconcileReport | None:
        """This engine's share of the pool's reconcile (engine_pass.py), unless one began
        since it was asked for; one at a time per pool and engine."""
        if self.engines is None:
            return None
        began = time.time()
        with self._engine_lock(pool):
            if self.engines.passed_since(pool, self.engine, asked_at):
                return None
            self.engines.began(pool, self.engine, began)
            try:
                report = EnginePass(pool, self.specs.effective(pool), self.pool_runtime(pool), self.state,
                                    self.lifecycle, self.close_session, self.line, self.sizer,
                                    self.specs.spec_hash(pool), self.engines).run()
            except RuntimeFailure as exc:
                self.engines.failed(self.engine, str(exc))
                raise
        self.engines.seen(self.engine, pool)
        self.hand_off(pool)
        return report

    @contextmanager
    def _engine_lock(self, pool: str):
        """Held by whatever touches this engine's containers of the pool (a pool pass run
        here, an engine pass): waited for, as such work is short."""
        if self.engines is None:  # one engine: the pool's lock is enough
            yield
            return
        name, token = f"reconcile:{pool}@{self.engine}", secrets.token_hex(8)
        deadline = time.monotonic() + LOCK_TTL_S
        while not self.state.try_lock(name, token, LOCK_TTL_S):
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"engine {self.engine}: pool {pool} stayed locked for {LOCK_TTL_S}s")
            time.sleep(0.05)
        try:
            yield
        finally:
            self.state.unlock(name, token)

    def close(self) -> None:
        for runtime in self._runtimes.values():
            runtime.close()
