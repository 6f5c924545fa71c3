"""Waiting that costs nothing: a job that finds no container parks in its pool's line (in
Redis) and gives its worker thread back; when a container turns idle (a boot finished, a
session ended on a recycling pool, a reconcile pass), whoever saw it runs the pool's
hand-off, which gives each idle container to the head of the line in one atomic step and
sends the job to a worker again, holding its claim.

A parked job holds no lease: no worker has it, and none can lose it. A handed job holds a
lease that nobody renews, so if the hand-off's sender dies before the job is sent, the
lease lapses and the job is sent again (jobs.requeue_lapsed), as for a dead worker. The
resent job finds its session open on its container (the claim script reads it as new to
that job, once). A parked job past claim_timeout_s fails with no_container_available.
"""

import json
import logging
import time
from collections.abc import Callable

from redis import Redis

from .errors import ClaimTimeout
from .jobs import JobStore
from .joblog import MAX_ENTRIES as LOG_ENTRIES
from .keys import Keys
from .line import FAIR_PLACE, JOIN_LINE, LEAVE_LINE
from .state import ASSIGN

log = logging.getLogger(__name__)

# Park the job that `delivery` holds: it joins its pool's line (keeping the place it held
# before, if any), reads waiting_for_container with its place, and gives up its lease.
# Returns the 1-based place, or 0 when the delivery no longer holds the job or it ended.
_PARK = """
local job, leases, log, channel, all_key, tenants_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local line_prefix, tenant, job_id, now, stale_before, delivery = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
""" + FAIR_PLACE + JOIN_LINE + """
local status = redis.call('HGET', job, 'status')
local open = {queued = true, waiting_for_container = true, running = true}
if not open[status] or redis.call('HGET', job, 'delivery') ~= delivery then return 0 end
join_line(tenant, job_id, now)
local place = ahead(tenant, job_id, now, stale_before) + 1
redis.call('HSET', job, 'status', 'waiting_for_container', 'position', place, 'delivery', '')
redis.call('HSETNX', job, 'parked_at', now)
redis.call('ZREM', leases, job_id)
redis.call('XADD', log, 'MAXLEN', '~', """ + str(LOG_ENTRIES) + """, '*', 'event', 'waiting_for_container',
           'data', cjson.encode({position = place}))
redis.call('PUBLISH', channel, 'waiting_for_container')
return place
"""

# While a container is idle and a job is in line: the head of the line (the first job of
# the tenant whose first job joined earliest: the fair order's first) leaves the line; if
# it is still waiting, its session opens on the longest-idle container, and the job gets
# an unheld lease (lapsing at job_lease_until) to be sent again under. A job no longer
# waiting (cancelled, failed) only leaves. Returns {job id, kept request, ...} to send.
_HAND_OFF = """
local idle, assigned, all_key, tenants_key, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local pool, now, lease_until, job_lease_until = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local records, line_prefix, sessions, jobs, tenants = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
""" + ASSIGN + LEAVE_LINE + """
local function head()
  local best, best_tenant, best_joined
  for _, tenant in ipairs(redis.call('SMEMBERS', tenants_key)) do
    local first = redis.call('ZRANGE', line_prefix .. tenant, 0, 0, 'WITHSCORES')
    if #first == 0 then
      redis.call('SREM', tenants_key, tenant)
    elseif not best or tonumber(first[2]) < best_joined
        or (tonumber(first[2]) == best_joined and first[1] < best) then
      best, best_tenant, best_joined = first[1], tenant, tonumber(first[2])
    end
  end
  return best, best_tenant
end
local handed = {}
while redis.call('ZCARD', idle) > 0 do
  local job_id, tenant = head()
  if not job_id then break end
  leave_line(tenant, job_id)
  local job = jobs .. job_id
  local fields = redis.call('HMGET', job, 'status', 'session_id', 'request')
  if fields[1] == 'waiting_for_container' and fields[3] then
    local session_name = tenant .. '/' .. fields[2]
    local session_key = sessions .. session_name
    if redis.call('EXISTS', session_key) == 0 then
      assign(session_key, session_name, job_id, tenants .. tenant .. ':')
      redis.call('HSET', session_key, 'handed_to', job_id)
    end
    redis.call('HSET', job, 'delivery', '', 'handed_at', now)
    redis.call('ZADD', leases, job_lease_until, job_id)
    table.insert(handed, job_id)
    table.insert(handed, fields[3])
  end
end
return handed
"""


class HandOff:
    def __init__(self, redis: Redis, keys: Keys, jobs: JobStore, claim_timeout_s: float, line_max_age_s: float,
                 job_lease_s: float, resume: Callable[[str, dict], None]):
        self.redis = redis
        self.keys = keys
        self.jobs = jobs
        self.claim_timeout_s = claim_timeout_s  # a parked job's deadline, from when it joined the line
        self.line_max_age_s = line_max_age_s  # entries older are stale (line.py)
        self.job_lease_s = job_lease_s
        self.resume = resume  # resume(job_id, kwargs) sends the job again under its id; returns at once
        self._park = redis.register_script(_PARK)
        self._hand_off = redis.register_script(_HAND_OFF)

    def park(self, pool: str, tenant: str, job_id: str, delivery: str) -> int:
        """Park the job `delivery` holds in the pool's line; its 1-based place, or 0 if the
        delivery had lost the job (or it had ended)."""
        now = time.time()
        keys = [self.keys.job(job_id), self.keys.job_leases, self.keys.job_log(job_id), self.keys.job_events(job_id),
                self.keys.pool(pool, "waiting"), self.keys.pool(pool, "waiting-tenants")]
        args = [self.keys.pool(pool, "waiting:"), tenant, job_id, now, now - self.line_max_age_s, delivery]
        return self._park(keys=keys, args=args)

    def run(self, pool: str, session_lease_s: float) -> list[str]:
        """Fail the pool's parked jobs past their deadline, then hand each idle container to
        the head of the line and send those jobs again. Returns the ids sent."""
        self._expire(pool)
        now = time.time()
        keys = [self.keys.pool(pool, "idle"), self.keys.pool(pool, "assigned"), self.keys.pool(pool, "waiting"),
                self.keys.pool(pool, "waiting-tenants"), self.keys.job_leases]
        args = [pool, now, now + session_lease_s, now + self.job_lease_s, self.keys.container(""),
                self.keys.pool(pool, "waiting:"), self.keys.session(""), self.keys.job(""), self.keys.tenant("")]
        handed = self._hand_off(keys=keys, args=args)
        sent = []
        for job_id, request in zip(handed[::2], handed[1::2], strict=True):
            try:
                self.resume(job_id, json.loads(request))
            except Exception:  # its lease lapses and requeue_lapsed sends it
                log.exception("pool %s: sending handed job %s failed; it is sent again when its lease lapses",
                              pool, job_id)
                continue
            sent.append(job_id)
        return sent

    def _expire(self, pool: str) -> None:
        """A parked job past claim_timeout_s fails (and so leaves the line)."""
        overdue = self.redis.zrangebyscore(self.keys.pool(pool, "waiting"), "-inf", time.time() - self.claim_timeout_s)
        error = ClaimTimeout(f"no {pool!r} container became free in {self.claim_timeout_s:g}s")
        for job_id in overdue:
            self.jobs.transition(job_id, "failed", allowed_from=("waiting_for_container",),
                                 error={"code": error.code, "message": str(error)}, finished_at=repr(time.time()))
