"""One pool across many Docker engines (DESIGN.md, "Engines").

Each engine is driven by the pool worker on its own host (`greenroom worker --queue pool
--engine <name>`, queue greenroom.pool.<name>): the only process that talks to it. Pool-wide
decisions are taken once per pass, under the pool's lock, by whichever pool worker runs
the pass, from Redis alone: which silent engines are lost, how many containers to start
and where (fewest first). What touches an engine (listing, health checks, adoption,
reaping, starting what was placed on it, removing what left service) is done by its own
worker: inline when the pass runs there, else in an engine pass asked for on its queue.

An engine's worker writes a heartbeat (engine:<name>) after every listing that worked.
Placement takes engines seen within `fresh_s`; an engine silent for engine_grace_s (its
worker gone, or its daemon) while another is healthy is lost: its containers leave
service (their sessions read container_lost), stay counted against max_total as
retiring until the engine lists them again (then they are removed) or says they are
gone, and the deficit boots elsewhere. With one engine nothing is ever declared lost: a
daemon restart is ridden out as before.
"""

import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from redis import Redis

from .errors import ContainerLost
from .keys import POOL_STATES, Keys
from .runtimes import Instance, Runtime
from .schemas import EngineStatus
from .settings import PoolSpec, Settings
from .state import Container, PoolState

log = logging.getLogger(__name__)
MAX_PARALLEL = 16
LOST = ContainerLost.code  # how a session whose container died, or went with its engine, reads (`why` starts so)

# Take a placement (a token in the engine's placed set) and record its container as
# warming in one step: a placement that lapsed meanwhile (lost engine) starts nothing.
_TAKE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
return 1
"""


def place(wanted: int, held: dict[str, int], room: dict[str, int], own: str | None) -> dict[str, int]:
    """Where `wanted` new containers go: each to the engine holding the fewest of the pool's
    (counting those placed before it), among those with room; ties go to `own` (started
    at once, no hop), then by name. Returns {engine: how many}, without zeros."""
    plan = dict.fromkeys(held, 0)
    for _ in range(wanted):
        open_ = [e for e in held if plan[e] < room.get(e, 0)]
        if not open_:
            break
        chosen = min(open_, key=lambda e: (held[e] + plan[e], e != own, e))
        plan[chosen] += 1
    return {e: n for e, n in plan.items() if n}


class Engines:
    """Heartbeats, placement, placements in flight, loss: Redis only. `request(pool, engine)`
    asks that engine's worker for an engine pass; `own` is the engine this process drives."""

    def __init__(self, redis: Redis, keys: Keys, settings: Settings, state: PoolState,
                 request: Callable[[str, str], None]):
        self.redis, self.keys, self.state = redis, keys, state
        self.specs = settings.engine_specs
        self.own = settings.own_engine
        self.pools = list(settings.pools)
        self.grace_s = settings.engine_grace_s
        self.fresh_s = max(3 * settings.reconcile_interval_s, 5.0)  # seen this recently: placeable
        self.request = request
        self._take = redis.register_script(_TAKE)

    # heartbeats
    def seen(self, engine: str, pool: str) -> None:
        """Its worker listed it just now."""
        now = time.time()
        self.redis.hset(self.keys.engine(engine), mapping={"seen_at": now, "error": "", f"seen:{pool}": now})

    def began(self, pool: str, engine: str, at: float) -> None:
        self.redis.hset(self.keys.engine(engine), f"began:{pool}", at)

    def passed_since(self, pool: str, engine: str, asked_at: float) -> bool:
        """An engine pass of the pool began after asked_at: a later ask adds nothing."""
        return float(self.redis.hget(self.keys.engine(engine), f"began:{pool}") or 0) > asked_at

    def failed(self, engine: str, error: str) -> None:
        self.redis.hset(self.keys.engine(engine), mapping={"error": error[:500], "error_at": time.time()})

    def health(self) -> dict[str, dict[str, str]]:
        with self.redis.pipeline(transaction=False) as pipe:
            for name in self.specs:
                pipe.hgetall(self.keys.engine(name))
            return dict(zip(self.specs, pipe.execute(), strict=True))

    def healthy(self, info: dict[str, str], now: float) -> bool:
        seen = float(info.get("seen_at") or 0)
        return seen > now - self.fresh_s and float(info.get("error_at") or 0) <= seen

    def silent(self, info: dict[str, str], now: float) -> bool:
        return float(info.get("seen_at") or 0) < now - self.grace_s

    # what each engine holds
    def held(self, pool: str) -> dict[str, dict[str, int]]:
        """Per pool, per engine: containers in service, leaving (retiring) and placed."""
        ids = {p: [i for part in (*POOL_STATES, "retiring") for i in self.redis.zrange(self.keys.pool(p, part), 0, -1)]
               for p in self.pools}
        with self.redis.pipeline(transaction=False) as pipe:
            for p in self.pools:
                for container_id in ids[p]:
                    pipe.hget(self.keys.container(container_id), "engine")
            engines = iter(pipe.execute())
        held = {p: dict.fromkeys(self.specs, 0) for p in self.pools}
        for p in self.pools:
            for _ in ids[p]:
                engine = next(engines) or next(iter(self.specs))
                held[p][engine] = held[p].get(engine, 0) + 1
            for engine, count in self.placed(p).items():
                held[p][engine] += count
        return held

    def placed(self, pool: str) -> dict[str, int]:
        """Placements not yet started by their engine's worker; lapsed ones (older than
        engine_grace_s: the engine did not take them) are dropped."""
        with self.redis.pipeline(transaction=False) as pipe:
            for engine in self.specs:
                pipe.zremrangebyscore(self._placed_key(pool, engine), "-inf", time.time() - self.grace_s)
                pipe.zcard(self._placed_key(pool, engine))
            found = pipe.execute()[1::2]
        return dict(zip(self.specs, found, strict=True))

    def occupied(self, pool: str, listed_here: int) -> int:
        """What counts against max_total: every engine's containers as Redis has them (in
        service, leaving, placed), or, for this engine, what it listed if more (containers
        on their way out that left every set)."""
        held = self.held(pool)[pool]
        others = sum(n for e, n in held.items() if e != self.own)
        return max(sum(held.values()), listed_here + others)

    # placement
    def spread(self, pool: str, wanted: int, here: str | None) -> dict[str, int]:
        """Where `wanted` new containers of the pool go: the healthy engines with room
        (capacity counts every pool's containers), fewest of the pool's first. `here`: the
        engine the pass just listed (healthy by that), if any."""
        held, room = self._placeable(pool, here)
        return place(wanted, held, room, self.own)

    def overfull_idle(self, pool: str, here: str | None) -> Container | None:
        """The newest idle container of the engine holding the most of the pool, if it holds
        two more than a placeable engine with room: moving one makes them even."""
        held, room = self._placeable(pool, here)
        everywhere = self.held(pool)[pool]
        open_ = [e for e in held if room[e] > 0]
        idle = [c for c in map(self.state.get, self.state.newest_idle(pool, 10_000)) if c]
        fullest = max((c.engine for c in idle), key=lambda e: everywhere.get(e, 0), default=None)
        if fullest is None or not open_ or everywhere.get(fullest, 0) - min(held[e] for e in open_) < 2:
            return None
        return next(c for c in idle if c.engine == fullest)

    def _placeable(self, pool: str, here: str | None) -> tuple[dict[str, int], dict[str, int]]:
        """The engines a container may go to (healthy; `here` is), with how many of the
        pool each holds and its room (capacity counts every pool's containers)."""
        now, health, held = time.time(), self.health(), self.held(pool)
        placeable = [e for e in self.specs if e == here or (e != self.own and self.healthy(health[e], now))]
        room = {e: self.specs[e].capacity - sum(held[p].get(e, 0) for p in self.pools) for e in placeable}
        return {e: held[pool].get(e, 0) for e in placeable}, room

    def reserve(self, pool: str, engine: str, count: int) -> None:
        """Place `count` containers on another engine: its worker starts them (start_placed)."""
        now = time.time()
        self.redis.zadd(self._placed_key(pool, engine), {secrets.token_hex(6): now for _ in range(count)})
        self.request(pool, engine)

    def tokens(self, pool: str, engine: str) -> list[str]:
        return self.redis.zrange(self._placed_key(pool, engine), 0, -1)

    def take(self, pool: str, engine: str, token: str, container: Container) -> bool:
        """Record the container as warming if its placement still stands (once)."""
        fields = {k: v for k, v in vars(container).items() if v is not None}
        return bool(self._take(keys=[self._placed_key(pool, engine), self.keys.pool(pool, "warming"),
                                     self.keys.container(container.id)],
                               args=[token, container.created_at, container.id,
                                     *(x for pair in fields.items() for x in pair)]))

    def _placed_key(self, pool: str, engine: str) -> str:
        return self.keys.pool(pool, f"placed:{engine}")

    def wants_pass(self, pool: str, engine: str, every_s: float) -> bool:
        """Another engine's worker has not listed the pool for every_s: ask it to."""
        return float(self.redis.hget(self.keys.engine(engine), f"seen:{pool}") or 0) < time.time() - every_s

    # loss
    def lost(self, now: float) -> list[str]:
        """Engines silent past the grace period while another is healthy (with none, the
        containers are kept: there is nowhere else to boot, and a daemon may come back)."""
        health = self.health()
        healthy = [e for e in self.specs if self.healthy(health[e], now)]
        return [e for e in self.specs if self.silent(health[e], now) and any(h != e for h in healthy)]

    def declare_lost(self, pool: str) -> list[Container]:
        """Take the containers of lost engines out of service: their sessions end (their next
        message reads container_lost), their records stay as retiring (counted against
        max_total) until the engine lists them again or reports them gone; placements there
        lapse. Returns the containers."""
        now = time.time()
        engines = self.lost(now)
        if not engines:
            return []
        gone = []
        for container in self.state.containers(pool).values():
            if container.engine not in engines or not self.state.move(container, container.state, None):
                continue
            if container.state == "assigned" and container.session:
                self.state.end_session(container.session, "broken", container.id,
                                       why=f"{LOST}: engine {container.engine!r} stopped answering")
            self.state.mark_gone(container)
            gone.append(container)
        for engine in engines:
            self.redis.delete(self._placed_key(pool, engine))
            if gone:
                self.redis.hset(self.keys.engine(engine), "lost_at", now)
        if gone:
            log.warning("pool %s: engine(s) %s silent for over %gs: %d container(s) declared lost",
                        pool, ", ".join(engines), self.grace_s, len(gone))
        return gone

    def status(self, pool: str, runtime_error: str | None) -> list[EngineStatus]:
        """The pool's containers per engine, and each engine's health (one engine: healthy
        while its runtime answers, as the pool's runtime_error says)."""
        counts = {e: dict.fromkeys(POOL_STATES, 0) for e in self.specs}
        for container in self.state.containers(pool).values():
            if container.state in POOL_STATES:  # else marked gone since its id was listed
                counts.setdefault(container.engine, dict.fromkeys(POOL_STATES, 0))[container.state] += 1
        if len(self.specs) == 1:
            return [EngineStatus(name=e, **n, healthy=runtime_error is None) for e, n in counts.items()]
        now, health = time.time(), self.health()
        return [EngineStatus(name=e, **n, healthy=self.healthy(health.get(e, {}), now),
                             error=health.get(e, {}).get("error") or None) for e, n in counts.items()]

    def clear_removed(self, pool: str, engine: str, live: dict[str, Instance], release: Callable[[int], None]) -> int:
        """Containers of this engine leaving service (retiring) that it no longer lists are
        gone: their records go (an engine back after a loss, its containers removed)."""
        ids = self.redis.zrange(self.keys.pool(pool, "retiring"), 0, -1)
        cleared = 0
        for container in filter(None, map(self.state.get, ids)):
            if container.engine == engine and container.id not in live:
                self.state.forget(container)
                release(container.port)
                cleared += 1
        return cleared


def start_placed(engines: Engines, pool: str, spec: PoolSpec, runtime: Runtime, start) -> list[Container]:
    """Start, on this engine, what passes elsewhere placed on it. `start(pool, spec, runtime,
    add)` is Lifecycle.start; `add` records the container only if its placement stands."""
    tokens = engines.tokens(pool, runtime.engine)
    if not tokens:
        return []
    with ThreadPoolExecutor(min(len(tokens), MAX_PARALLEL)) as threads:
        started = list(threads.map(
            lambda token: start(pool, spec, runtime, add=lambda c: engines.take(pool, runtime.engine, token, c)),
            tokens))
    return [c for c in started if c]
