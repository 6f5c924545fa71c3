"""A pool's line of jobs waiting for a container, fair across tenants.

Round r of the line holds each tenant's r-th waiting job; rounds go in order, and within
a round jobs go by when they joined. So one tenant's burst of fifty waits behind every
other tenant's first job, and within a tenant it is first come, first served.

Keys (keys.py): pool:<pool>:waiting (every job, score: joined at; its size is the demand
a reconcile boots for), pool:<pool>:waiting:<tenant> (one line per tenant, same scores)
and pool:<pool>:waiting-tenants (the tenants with a line). The claim script (state.py)
counts a job's place with the same Lua function, FAIR_PLACE.
"""

import time

from redis import Redis

from .keys import Keys

# ahead(tenant, job_id, now, stale_before): how many jobs come before this one in the fair
# order; a job not in line counts as joining now, last of its tenant. Lines are trimmed of
# jobs older than stale_before first (their job is gone).
# Expects `all_key`, `tenants_key` and `line_prefix` to be set by the script that uses it.
FAIR_PLACE = """
local function ahead(tenant, job_id, now, stale_before)
  redis.call('ZREMRANGEBYSCORE', all_key, '-inf', stale_before)
  local tenants = redis.call('SMEMBERS', tenants_key)
  local sizes = {}
  for _, other in ipairs(tenants) do
    redis.call('ZREMRANGEBYSCORE', line_prefix .. other, '-inf', stale_before)
    sizes[other] = redis.call('ZCARD', line_prefix .. other)
    if sizes[other] == 0 then redis.call('SREM', tenants_key, other) end
  end
  local mine = line_prefix .. tenant
  local round = redis.call('ZRANK', mine, job_id) or redis.call('ZCARD', mine)
  local joined = tonumber(redis.call('ZSCORE', mine, job_id) or now)
  local count = round
  for other, size in pairs(sizes) do
    if other ~= tenant then
      count = count + math.min(size, round)
      if size > round then
        local rival = redis.call('ZRANGE', line_prefix .. other, round, round, 'WITHSCORES')
        if tonumber(rival[2]) < joined then count = count + 1 end
      end
    end
  end
  return count
end
"""

# join_line(tenant, job_id, now): the job joins the line, keeping the place it held before,
# if any. Expects `all_key`, `tenants_key` and `line_prefix`, as FAIR_PLACE does.
JOIN_LINE = """
local function join_line(tenant, job_id, now)
  redis.call('ZADD', all_key, 'NX', now, job_id)
  redis.call('ZADD', line_prefix .. tenant, 'NX', now, job_id)
  redis.call('SADD', tenants_key, tenant)
end
"""

# Join and return the 1-based place.
_JOIN = """
local all_key, tenants_key, line_prefix = KEYS[1], KEYS[2], ARGV[1]
local tenant, job_id, now, stale_before = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
""" + FAIR_PLACE + JOIN_LINE + """
join_line(tenant, job_id, now)
return ahead(tenant, job_id, now, stale_before) + 1
"""

# The 1-based place of a job in line, 0 if it is not in line.
_PLACE = """
local all_key, tenants_key, line_prefix = KEYS[1], KEYS[2], ARGV[1]
local tenant, job_id, now, stale_before = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
""" + FAIR_PLACE + """
if not redis.call('ZSCORE', all_key, job_id) then return 0 end
return ahead(tenant, job_id, now, stale_before) + 1
"""

# leave_line(tenant, job_id): the job leaves the line (a tenant with no job left, the set
# of tenants). Expects `all_key`, `tenants_key` and `line_prefix`, as FAIR_PLACE does.
LEAVE_LINE = """
local function leave_line(tenant, job_id)
  redis.call('ZREM', all_key, job_id)
  redis.call('ZREM', line_prefix .. tenant, job_id)
  if redis.call('ZCARD', line_prefix .. tenant) == 0 then redis.call('SREM', tenants_key, tenant) end
end
"""

_LEAVE = """
local all_key, tenants_key, line_prefix = KEYS[1], KEYS[2], ARGV[1]
""" + LEAVE_LINE + """
leave_line(ARGV[2], ARGV[3])
"""


class WaitingLine:
    def __init__(self, redis: Redis, keys: Keys, max_wait_s: float):
        self.redis = redis
        self.keys = keys
        self.max_wait_s = max_wait_s  # no job waits longer: older entries are stale (their job is gone)
        self._join = redis.register_script(_JOIN)
        self._place = redis.register_script(_PLACE)
        self._leave = redis.register_script(_LEAVE)

    def join(self, pool: str, tenant: str, job_id: str) -> int:
        """Join the pool's line, or keep the place an earlier delivery of the job had;
        returns the 1-based place."""
        return self._join(keys=self._keys(pool), args=self._args(pool, tenant, job_id))

    def place(self, pool: str, tenant: str, job_id: str) -> int:
        """The job's 1-based place in the fair order; 0 if it is not in line."""
        return self._place(keys=self._keys(pool), args=self._args(pool, tenant, job_id))

    def leave(self, pool: str, tenant: str, job_id: str) -> None:
        self._leave(keys=self._keys(pool), args=[self.keys.pool(pool, "waiting:"), tenant, job_id])

    def size(self, pool: str) -> int:
        """Jobs in line younger than max_wait_s (a read only)."""
        return self.redis.zcount(self.keys.pool(pool, "waiting"), time.time() - self.max_wait_s, "+inf")

    def trimmed_size(self, pool: str) -> int:
        """Jobs in line, after dropping those older than max_wait_s (stale)."""
        key = self.keys.pool(pool, "waiting")
        with self.redis.pipeline() as pipe:
            pipe.zremrangebyscore(key, "-inf", time.time() - self.max_wait_s)
            pipe.zcard(key)
            return pipe.execute()[1]

    def in_order(self, pool: str) -> list[tuple[str, str, float]]:
        """The jobs in line in the fair order, as (job id, tenant, joined at); a read only
        (entries older than max_wait_s are left out, not dropped)."""
        tenants = sorted(self.redis.smembers(self.keys.pool(pool, "waiting-tenants")))
        since = time.time() - self.max_wait_s
        with self.redis.pipeline(transaction=False) as pipe:
            for tenant in tenants:
                pipe.zrangebyscore(self.keys.pool(pool, f"waiting:{tenant}"), since, "+inf", withscores=True)
            lines = pipe.execute()
        return fair_order(dict(zip(tenants, lines, strict=True)))

    def _keys(self, pool: str) -> list[str]:
        return [self.keys.pool(pool, "waiting"), self.keys.pool(pool, "waiting-tenants")]

    def _args(self, pool: str, tenant: str, job_id: str) -> list:
        now = time.time()
        return [self.keys.pool(pool, "waiting:"), tenant, job_id, now, now - self.max_wait_s]


def fair_order(lines: dict[str, list[tuple[str, float]]]) -> list[tuple[str, str, float]]:
    """Each tenant's line (job id, joined at; by joining) merged as FAIR_PLACE counts: round
    r holds each tenant's r-th job, rounds in order, by joining within a round."""
    ranked = [(round_, joined, job_id, tenant) for tenant, line in lines.items()
              for round_, (job_id, joined) in enumerate(line)]
    return [(job_id, tenant, joined) for _, joined, job_id, tenant in sorted(ranked)]
