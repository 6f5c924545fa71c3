"""Pool state in Redis: containers by state, sessions, leases, stats and overrides.

Per pool, three sorted sets hold the container ids by state (keys.py has the map):
warming (score: created at), idle (score: ready at) and assigned (score: lease expiry, so
expired leases are one ZRANGEBYSCORE away). Each container has a hash, each session a
hash naming its container. Every transition is one atomic step (a Lua script), so
concurrent workers and reconciles never hand a container out twice.
"""

import time
from dataclasses import dataclass
from enum import Enum

from redis import BlockingConnectionPool, Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .keys import POOL_STATES, Keys
from .line import FAIR_PLACE, LEAVE_LINE
from .schemas import tenant_of
from .settings import DEFAULT_ENGINE

# A Redis restart (a few seconds) is ridden out: a command that meets a connection error
# or timeout is retried with backoff, about 10 s in all, before the error surfaces.
REDIS_RETRY = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=12)
REDIS_CONNECTIONS = 64  # per client (process): more callers wait their turn
CLOSED_SESSION_TTL_S = 86400  # how long a closed session's id keeps answering "closed"
RETIRING_KEEP_S = 3600  # a removal stuck longer than this leaves the retiring set (its record stays)
DEGRADED_AFTER = 3  # consecutive failed boots: the pool reads degraded (and a rollout stops)
OVERRIDE_META = "_"  # overrides' fields of this prefix say when they were set, not what

# assign(session_key, session_name, job_id, tenant_keys): the longest-idle container goes
# to a new session, under a lease; the session joins its tenant's active sessions, and its
# job is no longer a new session on its way; the container's time idle is added to the
# pool's idle_seconds (its stats hash, beside `idle`). Returns the container's id. Expects `idle`,
# `assigned`, `records`, `pool`, `now` and `lease_until` to be set by the script that uses it.
ASSIGN = """
local function assign(session_key, session_name, job_id, tenant_keys)
  local popped = redis.call('ZPOPMIN', idle)
  local id = popped[1]
  redis.call('HINCRBYFLOAT', string.sub(idle, 1, -5) .. 'stats', 'idle_seconds',
             math.max(0, tonumber(now) - tonumber(popped[2])))
  redis.call('ZADD', assigned, lease_until, id)
  redis.call('HSET', records .. id, 'state', 'assigned', 'session', session_name, 'assigned_at', now)
  redis.call('HSET', session_key, 'container', id, 'pool', pool, 'state', 'active', 'created_at', now)
  redis.call('SADD', tenant_keys .. 'sessions', session_name)
  redis.call('ZREM', tenant_keys .. 'new-sessions', job_id)
  return id
end
"""

# Claim for a session: its existing container, else the longest-idle one. New sessions
# are served in the line's fair order (line.py): a job gets an idle container only while
# fewer live jobs come before it in line (all of them, if it is not in line) than there
# are idle containers. A session opened for a parked job by the hand-off (handoff.py)
# reads as new to that job, once. Returns {"new"|"existing", the container's hash} or
# {a Refusal's value}. A new session's first try records its arrival (once per job: the
# sizing's arrival rate).
_CLAIM = """
local session_key, idle, assigned, all_key, tenants_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local arrivals = KEYS[6]
local session_id, pool, lease_until, now, records, job_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local stale_before, line_prefix, tenant, tenant_keys = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
""" + FAIR_PLACE + ASSIGN + LEAVE_LINE + """
local session = redis.call('HMGET', session_key, 'container', 'state', 'handed_to')
if session[2] == 'active' then
  local found = 'existing'
  if session[3] == job_id then
    redis.call('HDEL', session_key, 'handed_to')
    found = 'new'
  end
  return {found, redis.call('HGETALL', records .. session[1])}
end
if session[2] then return {session[2]} end
redis.call('ZADD', arrivals, 'NX', now, job_id ~= '' and job_id or session_id)
if ahead(tenant, job_id, now, stale_before) >= redis.call('ZCARD', idle) then return {'empty'} end
local id = assign(session_key, session_id, job_id, tenant_keys)
leave_line(tenant, job_id)
return {'new', redis.call('HGETALL', records .. id)}
"""

# Move a container between state sets only if it is still where the caller saw it, so
# that of two racing actors (a boot watcher and a reconcile, say) exactly one wins. One
# leaving idle adds its time idle to the pool's idle_seconds (KEYS[4], the stats hash).
_MOVE = """
local from_set, to_set, container, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, state, now = ARGV[1], ARGV[2], ARGV[3]
local since = stats ~= '' and redis.call('ZSCORE', from_set, id)
if redis.call('ZREM', from_set, id) == 0 then return 0 end
if since then redis.call('HINCRBYFLOAT', stats, 'idle_seconds', math.max(0, tonumber(now) - tonumber(since))) end
if to_set ~= '' then redis.call('ZADD', to_set, now, id) end
redis.call('HSET', container, 'state', state, state .. '_at', now)
for i = 4, #ARGV, 2 do redis.call('HSET', container, ARGV[i], ARGV[i + 1]) end
return 1
"""

# End a session (closed or broken, and why) unless, given a container, it names another
# now; it leaves its tenant's active sessions.
_END_SESSION = """
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'container') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'why', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SREM', KEYS[2], ARGV[4])
return 1
"""

# Take a lock that is free or already ours (a redelivered job holds its session again).
_LOCK = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Extend a lock only if we still hold it.
_RENEW_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# Release a lock only if we still hold it.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def connect_redis(url: str, **options) -> Redis:
    """A client (text replies) that retries through a short outage (redis-py's own from_url
    client gives up at the first refused connection), on at most REDIS_CONNECTIONS
    connections: a caller waits for a free one (up to 20 s) rather than opening more, so
    two thousand long polls of one API process share a few dozen connections."""
    pool = BlockingConnectionPool.from_url(url, max_connections=REDIS_CONNECTIONS, timeout=20,
                                           decode_responses=True, retry=REDIS_RETRY, **options)
    return Redis(connection_pool=pool)


@dataclass(frozen=True)
class Container:
    id: str
    pool: str
    state: str
    port: int
    endpoint: str
    created_at: float
    key: str  # the bearer key the server requires (runtimes pass it at create)
    session: str | None = None
    engine: str = DEFAULT_ENGINE  # the Docker engine it runs on (engines.py)
    spec_hash: str = ""  # the spec it was made from (specs.spec_hash); "" : made before they were kept

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> "Container":
        return cls(fields["id"], fields["pool"], fields["state"], int(fields["port"]), fields["endpoint"],
                   float(fields["created_at"]), fields.get("key", ""), fields.get("session") or None,
                   fields.get("engine") or DEFAULT_ENGINE, fields.get("spec_hash", ""))


@dataclass(frozen=True)
class Claim:
    container: Container
    new: bool  # False: the session already held it (a follow-up, or a redelivered job)
    lease_s: float  # how far each renewal pushes the lease out (the pool's session_idle_ttl_s)


class Refusal(Enum):
    """Why a claim got no container."""

    EMPTY = "empty"  # none idle for this job yet (the line goes first): wait
    CLOSED = "closed"  # the session ended
    BROKEN = "broken"  # the session's container died


class PoolState:
    def __init__(self, redis: Redis, deployment: str):
        self.redis = redis
        self.keys = Keys(deployment)
        self._claim = redis.register_script(_CLAIM)
        self._move = redis.register_script(_MOVE)
        self._end_session = redis.register_script(_END_SESSION)
        self._lock = redis.register_script(_LOCK)
        self._unlock = redis.register_script(_UNLOCK)
        self._renew_lock = redis.register_script(_RENEW_LOCK)

    # containers
    def add(self, container: Container) -> None:
        """Record a container in its state (warming when just created, or adopted)."""
        fields = {k: v for k, v in vars(container).items() if v is not None}
        score = container.created_at if container.state == "warming" else time.time()
        with self.redis.pipeline() as pipe:
            pipe.hset(self.keys.container(container.id), mapping=fields)
            pipe.zadd(self.keys.pool(container.pool, container.state), {container.id: score})
            pipe.execute()

    def get(self, container_id: str) -> Container | None:
        fields = self.redis.hgetall(self.keys.container(container_id))
        return Container.from_hash(fields) if fields else None

    def containers(self, pool: str) -> dict[str, Container]:
        ids = [i for state in POOL_STATES for i in self.redis.zrange(self.keys.pool(pool, state), 0, -1)]
        with self.redis.pipeline(transaction=False) as pipe:
            for container_id in ids:
                pipe.hgetall(self.keys.container(container_id))
            found = [Container.from_hash(f) for f in pipe.execute() if f]
        return {c.id: c for c in found}

    def move(self, container: Container, from_state: str, to_state: str | None, **fields: str) -> bool:
        """Atomically move from one state to another (None: out of every set), setting
        any fields of its record in the same step."""
        to_key = self.keys.pool(container.pool, to_state) if to_state else ""
        stats = self.keys.pool(container.pool, "stats") if from_state == "idle" else ""
        return bool(self._move(
            keys=[self.keys.pool(container.pool, from_state), to_key, self.keys.container(container.id), stats],
            args=[container.id, to_state or "gone", time.time(), *(x for pair in fields.items() for x in pair)],
        ))

    def states(self, pool: str) -> dict[str, str]:
        """Each container id of the pool with its state (warming, idle, assigned)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for state in POOL_STATES:
                pipe.zrange(self.keys.pool(pool, state), 0, -1)
            found = pipe.execute()
        return {container_id: state for state, ids in zip(POOL_STATES, found, strict=True) for container_id in ids}

    def spec_hashes(self, pool: str) -> dict[str, tuple[str, str]]:
        """Each container id of the pool with its state and the spec hash it was made from."""
        states = self.states(pool)
        with self.redis.pipeline(transaction=False) as pipe:
            for container_id in states:
                pipe.hget(self.keys.container(container_id), "spec_hash")
            hashes = pipe.execute()
        return {cid: (state, found or "") for (cid, state), found in zip(states.items(), hashes, strict=True)}

    def idle_since(self, pool: str) -> list[float]:
        """When each idle container became idle."""
        return [score for _, score in self.redis.zrange(self.keys.pool(pool, "idle"), 0, -1, withscores=True)]

    def mark_gone(self, container: Container) -> None:
        """Out of every state set, its record kept as 'gone' until the runtime removes it;
        meanwhile it is in the pool's retiring set, for readers."""
        now, retiring = time.time(), self.keys.pool(container.pool, "retiring")
        with self.redis.pipeline() as pipe:
            for state in POOL_STATES:
                pipe.zrem(self.keys.pool(container.pool, state), container.id)
            pipe.hset(self.keys.container(container.id), "state", "gone")
            pipe.zadd(retiring, {container.id: now}, nx=True)
            pipe.zremrangebyscore(retiring, "-inf", now - RETIRING_KEEP_S)
            pipe.execute()

    def detach_session(self, container_id: str) -> None:
        """A recycled container names no session any more."""
        self.redis.hdel(self.keys.container(container_id), "session")

    def forget(self, container: Container) -> None:
        with self.redis.pipeline() as pipe:
            for state in (*POOL_STATES, "retiring"):
                pipe.zrem(self.keys.pool(container.pool, state), container.id)
            pipe.delete(self.keys.container(container.id))
            pipe.execute()

    def counts(self, pool: str) -> dict[str, int]:
        with self.redis.pipeline(transaction=False) as pipe:
            for state in POOL_STATES:
                pipe.zcard(self.keys.pool(pool, state))
            return dict(zip(POOL_STATES, pipe.execute(), strict=True))

    def idle_ids(self, pool: str) -> list[str]:
        """Idle container ids, the longest idle first (the order claims take them in)."""
        return self.redis.zrange(self.keys.pool(pool, "idle"), 0, -1)

    def newest_idle(self, pool: str, count: int) -> list[str]:
        """The ids a claim would hand out last (claims take the longest idle first)."""
        return self.redis.zrevrange(self.keys.pool(pool, "idle"), 0, count - 1)

    # sessions and leases
    def claim(self, pool: str, session_id: str, lease_s: float, max_wait_s: float,
              job_id: str = "") -> Claim | Refusal:
        """The session's container, or why there is none. Entries in line older than
        max_wait_s are dropped first (line.py)."""
        now, tenant = time.time(), tenant_of(session_id)
        keys = [self.keys.session(session_id),
                *(self.keys.pool(pool, part) for part in ("idle", "assigned", "waiting", "waiting-tenants",
                                                          "arrivals"))]
        args = [session_id, pool, now + lease_s, now, self.keys.container(""), job_id, now - max_wait_s,
                self.keys.pool(pool, "waiting:"), tenant, self.keys.tenant(tenant)]
        outcome, *found = self._claim(keys=keys, args=args)
        if not found:
            return Refusal(outcome)
        if not found[0]:
            return Refusal.BROKEN  # the session names a container whose record is gone
        pairs = iter(found[0])
        return Claim(Container.from_hash(dict(zip(pairs, pairs))), new=outcome == "new", lease_s=lease_s)

    def session(self, session_id: str) -> dict[str, str]:
        return self.redis.hgetall(self.keys.session(session_id))

    def renew_lease(self, container: Container, lease_s: float) -> bool:
        """Push the lease expiry out; False when the container is no longer assigned."""
        key = self.keys.pool(container.pool, "assigned")
        return bool(self.redis.zadd(key, {container.id: time.time() + lease_s}, xx=True, ch=True))

    def expired_leases(self, pool: str) -> list[str]:
        return self.redis.zrangebyscore(self.keys.pool(pool, "assigned"), "-inf", time.time())

    def end_session(self, session_id: str, state: str, container_id: str = "", why: str = "") -> None:
        """Mark a session closed or broken; the id then answers so (and why, if told) for a
        day. With a container id, only if the session still names it (it may have moved on)."""
        self._end_session(keys=[self.keys.session(session_id), self.keys.tenant(tenant_of(session_id), "sessions")],
                          args=[state, container_id, CLOSED_SESSION_TTL_S, session_id, why])

    def least_recently_used(self, pool: str, used_before: float, lease_s: float, count: int) -> list[Container]:
        """Up to count assigned containers last used before used_before, the longest unused
        first (an assigned container's score is its last use plus lease_s)."""
        ids = self.redis.zrangebyscore(self.keys.pool(pool, "assigned"), "-inf", used_before + lease_s,
                                       start=0, num=count)
        return [c for c in map(self.get, ids) if c and c.session]

    def locked(self, name: str) -> bool:
        return bool(self.redis.exists(self.keys.lock(name)))

    # pool stats and run-time overrides
    def incr_stat(self, pool: str, name: str, amount: int = 1) -> None:
        self.redis.hincrby(self.keys.pool(pool, "stats"), name, amount)

    def boot_succeeded(self, pool: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.hincrby(self.keys.pool(pool, "stats"), "booted", 1)
            pipe.hset(self.keys.pool(pool, "stats"), "consecutive_failures", 0)
            pipe.hset(self.keys.pool(pool, "info"), "backoff_until", 0)
            pipe.execute()

    def boot_failed(self, pool: str, base_s: float, max_s: float) -> float:
        """Count a failed boot and back off exponentially before the next; returns the delay."""
        stats = self.keys.pool(pool, "stats")
        with self.redis.pipeline() as pipe:
            pipe.hincrby(stats, "failed", 1)
            pipe.hincrby(stats, "consecutive_failures", 1)
            failures = pipe.execute()[1]
        delay = min(base_s * 2 ** (failures - 1), max_s)
        self.set_info(pool, backoff_until=time.time() + delay)
        return delay

    def degraded(self, pool: str) -> bool:
        """Its last DEGRADED_AFTER boots failed."""
        return int(self.redis.hget(self.keys.pool(pool, "stats"), "consecutive_failures") or 0) >= DEGRADED_AFTER

    def backoff_until(self, pool: str) -> float:
        return float(self.info(pool).get("backoff_until") or 0)

    def info(self, pool: str) -> dict[str, str]:
        """What the workers last learnt of the pool: its runtime, backoff, runtime error."""
        return self.redis.hgetall(self.keys.pool(pool, "info"))

    def set_info(self, pool: str, **fields: str) -> None:
        self.redis.hset(self.keys.pool(pool, "info"), mapping=fields)

    def stats(self, pool: str) -> dict[str, int | float]:
        """Counters: whole numbers, but idle_seconds (a float)."""
        return {k: float(v) if k == "idle_seconds" else int(v)
                for k, v in self.redis.hgetall(self.keys.pool(pool, "stats")).items()}

    def overrides(self, pool: str) -> dict[str, int | str]:
        """The run-time scale: field -> a number, or "auto" (target_idle)."""
        found = self.redis.hgetall(self.keys.pool(pool, "overrides"))
        return {k: v if v == "auto" else int(v) for k, v in found.items() if not k.startswith(OVERRIDE_META)}

    def override_meta(self, pool: str) -> dict[str, str]:
        """When the overrides were last set, and what the configuration said then:
        {"set_at": ..., "configured.<field>": ...}."""
        found = self.redis.hgetall(self.keys.pool(pool, "overrides"))
        return {k.removeprefix(OVERRIDE_META): v for k, v in found.items() if k.startswith(OVERRIDE_META)}

    def set_overrides(self, pool: str, values: dict[str, int | str], configured: dict[str, int | str]) -> None:
        """Set (a value) or drop (None) overrides, noting when and what was configured then."""
        key = self.keys.pool(pool, "overrides")
        dropped = [k for k, v in values.items() if v is None]
        kept = {k: v for k, v in values.items() if v is not None}
        with self.redis.pipeline() as pipe:
            if dropped:
                pipe.hdel(key, *dropped, *(f"{OVERRIDE_META}configured.{k}" for k in dropped))
            if kept:
                pipe.hset(key, mapping=kept | {f"{OVERRIDE_META}configured.{k}": str(configured[k]) for k in kept})
            pipe.hset(key, f"{OVERRIDE_META}set_at", repr(time.time()))
            pipe.execute()
        if not self.overrides(pool):
            self.redis.delete(key)  # no override left: nothing to say when

    # rollouts
    def rollout_generation(self, pool: str) -> int:
        """How many rollouts were asked for (greenroom pool rollout): part of the spec hash."""
        return int(self.redis.hget(self.keys.pool(pool, "rollout"), "generation") or 0)

    def request_rollout(self, pool: str) -> int:
        key = self.keys.pool(pool, "rollout")
        with self.redis.pipeline() as pipe:
            pipe.hincrby(key, "generation", 1)
            pipe.hset(key, "requested_at", repr(time.time()))
            return pipe.execute()[0]

    def discard_session(self, session_id: str) -> None:
        """Forget a session entirely, so that its id can claim afresh."""
        self.redis.delete(self.keys.session(session_id))

    # locks: the reconcile lock per pool, the one-message-at-a-time lock per session
    def try_lock(self, name: str, token: str, ttl_s: float) -> bool:
        return bool(self._lock(keys=[self.keys.lock(name)], args=[token, int(ttl_s * 1000)]))

    def renew_lock(self, name: str, token: str, ttl_s: float) -> bool:
        return bool(self._renew_lock(keys=[self.keys.lock(name)], args=[token, int(ttl_s * 1000)]))

    def unlock(self, name: str, token: str) -> None:
        self._unlock(keys=[self.keys.lock(name)], args=[token])

    def flag(self, name: str) -> None:
        self.redis.set(self.keys.flag(name), 1)

    def take_flag(self, name: str) -> bool:
        return self.redis.getdel(self.keys.flag(name)) is not None
