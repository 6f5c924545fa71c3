"""Starting, watching and destroying one container, keeping Redis and ports in step."""

import logging
import secrets
import threading
import time
from collections.abc import Callable

from redis import RedisError

from .errors import RuntimeFailure
from .metrics import Metrics
from .ports import PortAllocator
from .runtimes import Runtime
from .settings import PoolSpec
from .state import Container, PoolState

log = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self, state: PoolState, ports: PortAllocator, metrics: Metrics, backoff_s: tuple[float, float],
                 on_idle: Callable[[str], object] = lambda pool: None,
                 on_elsewhere: Callable[[Container], object] = lambda container: None):
        self.state = state
        self.ports = ports
        self.metrics = metrics
        self.backoff_s = backoff_s  # (first, longest) pause after consecutive boot failures
        self.on_idle = on_idle  # on_idle(pool): a container of the pool just became idle
        self.on_elsewhere = on_elsewhere  # a container of an engine this process does not drive left service

    def start(self, pool: str, spec: PoolSpec, runtime: Runtime, spec_hash: str = "",
              add: Callable[[Container], bool] | None = None) -> Container | None:
        """Create one container of the spec (spec_hash: specs.spec_hash of it, labelled on
        the container), recorded as warming before the runtime is asked, so that
        concurrent counts include it; its boot is then watched in the background. `add`
        records it instead, or refuses (False: nothing is started; engines.py)."""
        container_id = f"gr-{pool}-{secrets.token_hex(6)}"
        port = self.ports.allocate(container_id, engine=runtime.engine)
        container = Container(container_id, pool, "warming", port, runtime.endpoint(container_id, spec, port),
                              time.time(), key=secrets.token_urlsafe(32), engine=runtime.engine,
                              spec_hash=spec_hash)
        if add is None:
            self.state.add(container)
        elif not add(container):
            self.ports.release(port)
            return None
        try:
            runtime.create(container_id, pool, spec, port, container.key, spec_hash=spec_hash)
        except RuntimeFailure as exc:
            log.warning("pool %s: creating %s failed: %s", pool, container_id, exc)
            self.fail(container, runtime)
            return None
        self.watch_boot(container, spec, runtime)
        return container

    def watch_boot(self, container: Container, spec: PoolSpec, runtime: Runtime) -> None:
        threading.Thread(target=self._await_boot, args=(container, spec, runtime),
                         name=f"boot-{container.id}", daemon=True).start()

    def _await_boot(self, container: Container, spec: PoolSpec, runtime: Runtime) -> None:
        try:
            self._promote_when_healthy(container, spec, runtime)
        except (RedisError, RuntimeFailure) as exc:  # the periodic reconcile takes over
            log.warning("pool %s: watching %s failed: %s", container.pool, container.id, exc)

    def _promote_when_healthy(self, container: Container, spec: PoolSpec, runtime: Runtime) -> None:
        """Promote to idle the moment it answers healthy; fail it past boot_timeout_s."""
        deadline = container.created_at + spec.boot_timeout_s
        pause = 0.02
        while time.time() < deadline:
            if endpoint := runtime.ready_endpoint(container.id, spec, container.port,
                                                  timeout=min(1.0, spec.boot_timeout_s)):
                self.show(runtime, container.pool, container.id, "idle")  # before a claim can move it on
                self.promote(container, endpoint)
                return
            if self.state.get(container.id) is None:
                return  # forgotten meanwhile (destroyed, or vanished)
            time.sleep(pause)
            pause = min(pause * 1.5, 0.25)
        self.fail(container, runtime)

    def promote(self, container: Container, endpoint: str) -> bool:
        """Warming to idle, with the endpoint it serves at (a pod's IP is known only now)."""
        if not self.state.move(container, "warming", "idle", endpoint=endpoint):
            return False
        self.state.boot_succeeded(container.pool)
        booted_s = time.time() - container.created_at
        self.metrics.observe("boot_seconds", container.pool, booted_s)
        self.metrics.event(container.pool, "booted", container.id, booted_s)
        log.info("pool %s: %s ready in %.1fs", container.pool, container.id, booted_s)
        self.on_idle(container.pool)
        return True

    @staticmethod
    def show(runtime: Runtime, pool: str, container_id: str, state: str) -> None:
        """Let the runtime show the state (pod labels); a failure costs only the label."""
        try:
            runtime.mark(container_id, state)
        except RuntimeFailure as exc:
            log.warning("pool %s: labelling %s %s failed: %s", pool, container_id, state, exc)

    def fail(self, container: Container, runtime: Runtime) -> None:
        """A container that never became healthy: destroyed and counted, exactly once."""
        if self.state.move(container, "warming", None):
            self.destroy(container, runtime)
            self.count_failure(container)

    def count_failure(self, container: Container) -> None:
        delay = self.state.boot_failed(container.pool, *self.backoff_s)
        self.metrics.event(container.pool, "failed", container.id, time.time() - container.created_at)
        log.warning("pool %s: %s never became healthy; next boot in %.0fs at the earliest",
                    container.pool, container.id, delay)

    def destroy(self, container: Container, runtime: Runtime | None) -> None:
        """Take it out of service at once, then remove it. If the runtime fails, its record
        stays as 'gone', so no reconcile adopts it and the next one retries the removal.
        Without a runtime (its engine is driven elsewhere) its engine's worker removes it."""
        self.state.mark_gone(container)
        if runtime is None:
            self.on_elsewhere(container)
            return
        try:
            runtime.destroy(container.id)
        except RuntimeFailure as exc:
            log.warning("pool %s: destroying %s failed: %s", container.pool, container.id, exc)
            return
        self.state.forget(container)
        self.ports.release(container.port)
        log.info("pool %s: %s removed", container.pool, container.id)
