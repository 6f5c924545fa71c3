"""One reconcile pass over one pool: level-triggered and idempotent.

The caller (PoolManager.reconcile) holds the pool's lock, so passes never overlap.
"""

import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .engines import LOST, Engines, start_placed
from .lifecycle import Lifecycle
from .line import WaitingLine
from .runtimes import Instance, Runtime
from .settings import PoolSpec
from .sizing import Sizer
from .state import Container, PoolState

log = logging.getLogger(__name__)
MAX_PARALLEL = 16


@dataclass
class ReconcileReport:
    pool: str
    forgotten: int = 0
    adopted: int = 0
    destroyed: int = 0
    failed: int = 0
    reaped: int = 0
    started: int = 0
    retired: int = 0
    preempted: int = 0  # idle sessions closed to serve the line at max_total
    target_idle: int = 0  # the idle target of this pass (computed, for an auto pool)
    old: int = 0  # containers of an older spec hash left after the pass (a rollout under way)
    duration_s: float = 0.0
    started_ids: list[str] = field(default_factory=list)


class ReconcilePass:
    lists_here = True  # this pass listed its engine: containers may be placed on it

    def __init__(self, pool: str, spec: PoolSpec, runtime: Runtime, state: PoolState, lifecycle: Lifecycle,
                 close_session, line: WaitingLine, sizer: Sizer, spec_hash: str, engines: Engines | None = None):
        self.pool, self.spec, self.runtime = pool, spec, runtime
        self.state, self.lifecycle, self.line = state, lifecycle, line
        self.close_session = close_session
        self.sizer, self.spec_hash = sizer, spec_hash  # new containers are made from this spec hash
        self.engines = engines  # more than one engine: counts and placement over all of them (engines.py)
        self.report = ReconcileReport(pool)

    def run(self) -> ReconcileReport:
        began = time.monotonic()
        live = {i.id: i for i in self.runtime.list_managed() if i.pool == self.pool}
        known = self.state.containers(self.pool)
        here = {i: c for i, c in known.items() if c.engine == self.runtime.engine}  # what this runtime can see
        self.forget_vanished(here, live)
        self.adopt_unknown(known, live)
        self.check_warming(here, live)
        self.reap_expired_leases()
        self.resize(len(live))
        if self.engines:
            self.engine_work(live)
        self.show_states(live)
        self.report.duration_s = time.monotonic() - began
        return self.report

    def forget_vanished(self, known: dict[str, Container], live: dict[str, Instance]) -> None:
        """State for containers that died or were removed from outside goes; an assigned
        one's session is marked broken, its next message told container_lost (as when the
        relay finds it dead first)."""
        for container in known.values():
            instance = live.get(container.id)
            if instance and instance.running:
                continue
            if not self.state.move(container, container.state, None):
                continue  # someone else moved it meanwhile: theirs to handle
            if container.state == "assigned" and container.session:
                self.state.end_session(container.session, "broken", container.id,
                                       why=f"{LOST}: its container {container.id} stopped")
            self.lifecycle.destroy(container, self.runtime)
            self.report.forgotten += 1
            if container.state == "warming":  # it crashed while booting
                self.lifecycle.count_failure(container)
                self.report.failed += 1

    def adopt_unknown(self, known: dict[str, Container], live: dict[str, Instance]) -> None:
        """Live, labelled containers Redis does not know (a manager crash, a Redis flush):
        adopt the healthy and the still booting, destroy the rest."""
        unknown = [i for i in live.values() if i.id not in known]
        if not unknown:
            return
        with ThreadPoolExecutor(min(len(unknown), MAX_PARALLEL)) as pool:
            list(pool.map(self._adopt_or_destroy, unknown))

    def _adopt_or_destroy(self, instance: Instance) -> None:
        record = self.state.get(instance.id)
        if record is not None and record.state != "gone":
            return  # known after all: created or claimed since we listed
        endpoint = self.runtime.endpoint(instance.id, self.spec, instance.port)
        booting = time.time() - instance.created_at < self.spec.boot_timeout_s
        key = self.runtime.key_of(instance.id, self.spec) if record is None and instance.running else None
        if key:  # without its key greenroom could not talk to it
            if ready := self.runtime.ready_endpoint(instance.id, self.spec, instance.port):
                self._adopt(instance, ready, key, "idle")
                return
            if booting:
                self._adopt(instance, endpoint, key, "warming")
                return
        placeholder = Container(instance.id, self.pool, "gone", instance.port, endpoint, instance.created_at, "",
                                engine=self.runtime.engine)
        self.lifecycle.destroy(placeholder, self.runtime)
        self.report.destroyed += 1

    def _adopt(self, instance: Instance, endpoint: str, key: str, state: str) -> None:
        container = Container(instance.id, self.pool, state, instance.port, endpoint, instance.created_at, key,
                              engine=self.runtime.engine, spec_hash=instance.spec_hash)
        self.lifecycle.ports.reserve(instance.port, instance.id)
        self.state.add(container)
        if state == "warming":
            self.lifecycle.watch_boot(container, self.spec, self.runtime)
        log.info("pool %s: adopted %s as %s", self.pool, instance.id, state)
        self.report.adopted += 1

    def check_warming(self, known: dict[str, Container], live: dict[str, Instance]) -> None:
        """Promote warming containers that answer healthy; fail those past boot_timeout_s.
        (Boot watchers do this at once; this pass is the safety net after a crash.)"""
        warming = [c for c in known.values() if c.state == "warming" and c.id in live]
        for container in warming:
            if endpoint := self.runtime.ready_endpoint(container.id, self.spec, container.port, timeout=0.5):
                self.lifecycle.promote(container, endpoint)
            elif time.time() - container.created_at > self.spec.boot_timeout_s:
                self.lifecycle.fail(container, self.runtime)
                self.report.failed += 1

    def reap_expired_leases(self) -> None:
        """Sessions unused for session_idle_ttl_s (or whose worker vanished) end."""
        for container_id in self.state.expired_leases(self.pool):
            container = self.state.get(container_id)
            if container and container.session:
                self.close_session(container.session)
                self.report.reaped += 1

    def show_states(self, live: dict[str, Instance]) -> None:
        """Let the runtime show each container's state as Redis has it now (pod labels on
        Kubernetes, nothing elsewhere). Every claim triggers a pass, so a claimed pod
        reads assigned within moments, though chat workers hold no runtime rights."""
        for container_id, state in self.state.states(self.pool).items():
            if container_id in live:
                self.lifecycle.show(self.runtime, self.pool, container_id, state)

    def idle_target(self) -> int:
        """target_idle, or for "auto" what the sizing computes now (sizing.py)."""
        if self.spec.target_idle != "auto":
            self.sizer.forget(self.pool, self.spec)
            return self.spec.target_idle
        return self.sizer.decide(self.pool, self.spec).idle

    def resize(self, existing: int) -> None:
        """Bring idle + warming containers of the current spec to the demand: the idle
        target plus the jobs waiting for a container. Start the whole deficit at once, in
        parallel, never past max_total; retire idle containers beyond the demand (the
        target was lowered, waiting jobs gave up, or new containers replaced old ones),
        those of an older spec first, else the most recently idle.

        A rollout is this rule with old containers about: they do not count towards the
        demand, so new ones boot for it, and as those become idle the old idle ones are
        the surplus, retired, so the idle count never drops below the target (except at
        max_total, where one old idle container at a time makes way for a new one). The
        assigned keep their sessions. While the new spec's boots fail (degraded), one boots
        at a time and no old container is retired: the old ones keep serving.

        `existing` is what the runtime listed at the start of this pass: containers on
        their way out (a closed session's, a crashed one's) have left the state sets
        but still run until removed, and count against max_total until they are gone.
        Only passes create containers, one pass at a time, so the runtime holds no more
        than that now."""
        made = self.state.spec_hashes(self.pool)
        by = Counter((state, made_from == self.spec_hash) for state, made_from in made.values())
        idle, old_idle = by["idle", True] + by["idle", False], self._old_idle(made)
        waiting = self.line.trimmed_size(self.pool)
        self.report.target_idle = self.idle_target()
        demand = self.report.target_idle + waiting
        if idle > demand:
            old_idle = self.retire(idle - demand, old_idle)
        deficit = demand - by["idle", True] - by["warming", True] - self.placed()
        room = self.spec.max_total - self.occupied(len(made), existing) + self.report.retired
        if deficit > room and old_idle and not by["warming", True] and not self.state.degraded(self.pool):
            old_idle = self.retire(1, old_idle)  # a rollout at max_total: one at a time
            room += 1
        if (short := min(deficit, waiting) - room) > 0 and self.make_room(short):
            existing = len(self.runtime.list_managed())
            room = self.spec.max_total - self.occupied(sum(self.state.counts(self.pool).values()), existing)
        self.report.old = sum(1 for _, made_from in self.state.spec_hashes(self.pool).values()
                              if made_from != self.spec_hash)
        wanted = max(0, min(deficit, room))
        if self.report.old and self.state.degraded(self.pool):
            wanted = min(wanted, max(0, 1 - by["warming", True]))  # a failing new spec: one canary at a time
        if not wanted and self.engines and not by["warming", True] and not waiting:
            self.rebalance()
        if not wanted or time.time() < self.state.backoff_until(self.pool):
            return  # nothing to do, or backing off after boot failures
        on_this_engine = wanted
        if self.engines:  # fewest first; what goes elsewhere is placed for its engine's worker
            spread = self.engines.spread(self.pool, wanted, self.runtime.engine if self.lists_here else None)
            on_this_engine = spread.pop(self.runtime.engine, 0)
            for engine, count in spread.items():
                self.engines.reserve(self.pool, engine, count)
            self.report.started = sum(spread.values())
        if on_this_engine:
            with ThreadPoolExecutor(min(on_this_engine, MAX_PARALLEL)) as pool:
                started = list(pool.map(lambda _: self.lifecycle.start(self.pool, self.spec, self.runtime,
                                                                       self.spec_hash),
                                        range(on_this_engine)))
            self.report.started_ids = [c.id for c in started if c]
            self.report.started += len(self.report.started_ids)

    def placed(self) -> int:
        """Containers placed on other engines and not yet started there (engines.py)."""
        return sum(self.engines.placed(self.pool).values()) if self.engines else 0

    def occupied(self, known: int, existing: int) -> int:
        """What counts against max_total: containers in the state sets, or the runtime's
        listing if more; with several engines, every engine's (engines.py)."""
        if self.engines:
            return self.engines.occupied(self.pool, existing)
        return max(known, existing)

    def engine_work(self, live: dict[str, Instance]) -> None:
        """This engine's share of what other passes decided: start what they placed here,
        and forget what left service and is no longer here (engines.py)."""
        started = start_placed(self.engines, self.pool, self.spec, self.runtime,
                               lambda *args, add: self.lifecycle.start(*args, self.spec_hash, add=add))
        self.report.started += len(started)
        self.report.started_ids += [c.id for c in started]
        self.engines.clear_removed(self.pool, self.runtime.engine, live, self.lifecycle.ports.release)

    def _old_idle(self, made: dict[str, tuple[str, str]]) -> list[str]:
        """Idle containers of an older spec, the longest idle first (claims take those first too)."""
        old = {cid for cid, (state, made_from) in made.items() if state == "idle" and made_from != self.spec_hash}
        return [cid for cid in self.state.idle_ids(self.pool) if cid in old] if old else []

    def make_room(self, short: int) -> int:
        """At max_total, with `short` waiting jobs no container is on its way for: close up
        to that many sessions idle for session_min_idle_s, least recently used first (none
        mid-relay), so their containers serve the line. Returns how many were closed."""
        now = time.time()
        closed = 0
        for container in self.state.least_recently_used(self.pool, now - self.spec.session_min_idle_s,
                                                        self.spec.session_idle_ttl_s, short):
            if self.state.locked(f"session:{container.session}"):
                continue  # a message is being relayed: not idle after all
            why = (f"closed after {self.spec.session_min_idle_s:g}s unused, to free its container for jobs "
                   f"waiting at the pool's max_total ({self.spec.max_total})")
            if self.close_session(container.session, "closed", why):
                log.info("pool %s: closed idle session %s (%s) for the waiting line", self.pool,
                         container.session, container.id)
                closed += 1
        self.report.preempted = closed
        return closed

    def here(self, container: Container) -> Runtime | None:
        """The runtime that can remove the container: this pass's, if it runs on its engine."""
        return self.runtime if container.engine == self.runtime.engine else None

    def rebalance(self) -> None:
        """At rest, with engines two or more apart (a worker started late, an engine back):
        one idle container of the fullest leaves; its replacement goes to the fewest."""
        container = self.engines.overfull_idle(self.pool, self.runtime.engine if self.lists_here else None)
        if container and self.state.move(container, "idle", None):
            self.lifecycle.destroy(container, self.here(container))
            self.report.retired += 1

    def retire(self, surplus: int, old_idle: list[str]) -> list[str]:
        """Take `surplus` idle containers out of service at once (old_idle first, then the
        most recently idle), then remove them in parallel. Returns the old idle left."""
        chosen = old_idle[:surplus]
        if len(chosen) < surplus:
            newest = self.state.newest_idle(self.pool, surplus + len(chosen))
            chosen += [cid for cid in newest if cid not in chosen][:surplus - len(chosen)]
        leaving = [c for c in map(self.state.get, chosen)
                   if c and self.state.move(c, "idle", None)]  # unless claimed meanwhile
        if leaving:
            with ThreadPoolExecutor(min(len(leaving), MAX_PARALLEL)) as pool:
                list(pool.map(lambda c: self.lifecycle.destroy(c, self.here(c)), leaving))
            self.report.retired += len(leaving)
        return old_idle[len(chosen):] if len(chosen) <= len(old_idle) else []
