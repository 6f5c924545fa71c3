"""Job records: written at submit time (so an unknown id is a 404, never an eternal
"pending"), moved through their states by the worker, and awaited by long polls.

    queued -> waiting_for_container -> running -> succeeded | failed
    queued | waiting_for_container -> cancelled

A final state is never left: a redelivered job finds its result and does not run again.

Deliveries and leases: a worker serving a job holds its lease (the record's `delivery`
token, and the job's expiry in the deployment's job-leases sorted set), renewed while it
works. A lease that lapses means the worker died: requeue_lapsed() sends the job again
from the request kept in its record, and the token fences the dead delivery out, so no
second reply can land. A delivery that finds another's live lease is a duplicate.
"""

import json
import threading
import time
from collections.abc import Callable, Iterator

from redis import Redis

from .job_events import JobEvents
from .joblog import MAX_ENTRIES as LOG_ENTRIES
from .joblog import Entry, JobLog
from .keys import Keys
from .errors import GreenroomError, LimitExceeded
from .schemas import CANCELLABLE, FINAL, tenant_session
from .settings import TenantLimits

# A long poll re-reads its job at least this often, events or not: events are lost only
# while the listener reconnects, and it wakes every poll when it has.
REREAD_S = 10.0
LOGGED_FIELDS = ("position",)  # of a transition's fields, those its log entry carries

# Admit and record a job, unless its id exists ('exists') or its tenant is over a limit
# (the limit's name): submissions this second, jobs not yet final, sessions (active ones
# and new ones on their way). Entries older than stale_before are dropped first (a job
# lost without ending). new_session '?': a new session unless the session was started
# before; either way it is marked started. The job's log (joblog.py) starts with `queued`.
_CREATE = """
local job, jobs, sessions, new_sessions, rate, log = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local started = KEYS[7]
local ttl, now, stale_before, job_id, new_session = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local max_rate, max_jobs, max_sessions = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if redis.call('EXISTS', job) == 1 then return 'exists' end
if new_session == '?' then new_session = redis.call('EXISTS', started) == 1 and '0' or '1' end
if redis.call('INCR', rate) == 1 then redis.call('EXPIRE', rate, 1) end
if tonumber(redis.call('GET', rate)) > max_rate then return 'submissions_per_second' end
redis.call('ZREMRANGEBYSCORE', jobs, '-inf', stale_before)
if redis.call('ZCARD', jobs) >= max_jobs then return 'jobs_in_flight' end
if new_session == '1' then
  redis.call('ZREMRANGEBYSCORE', new_sessions, '-inf', stale_before)
  if redis.call('SCARD', sessions) + redis.call('ZCARD', new_sessions) >= max_sessions then return 'sessions' end
  redis.call('ZADD', new_sessions, now, job_id)
end
redis.call('ZADD', jobs, now, job_id)
redis.call('HSET', job, 'new_session', new_session, unpack(ARGV, 9))
redis.call('EXPIRE', job, ttl)
redis.call('XADD', log, '*', 'event', 'queued', 'data', '{}')
redis.call('EXPIRE', log, ttl)
redis.call('SET', started, 1, 'EX', ttl)
return 'created:' .. new_session
"""

# Set fields and the status unless the job is already final, or (allowed_from given) its
# status is not one of those, or (a delivery token given) that delivery no longer holds
# the job. A final state drops the lease and the kept request, and the job leaves its
# tenant's counts and its pool's line. Logs the new status (with log_data) and publishes it.
_TRANSITION = """
local key, channel, leases, log = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local new, allowed_from, ttl, delivery, job_id, tenants = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local log_data, pools = ARGV[7], ARGV[8]
local final = {succeeded = true, failed = true, cancelled = true}
local status = redis.call('HGET', key, 'status')
if not status or final[status] then return 0 end
if delivery ~= '' and redis.call('HGET', key, 'delivery') ~= delivery then return 0 end
if allowed_from ~= '' then
  local allowed = false
  for s in string.gmatch(allowed_from, '[^,]+') do if s == status then allowed = true end end
  if not allowed then return 0 end
end
redis.call('HSET', key, 'status', new)
for i = 9, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
if final[new] then
  redis.call('HDEL', key, 'request', 'delivery')
  redis.call('ZREM', leases, job_id)
  local tenant = redis.call('HGET', key, 'tenant')
  redis.call('ZREM', tenants .. tenant .. ':jobs', job_id)
  redis.call('ZREM', tenants .. tenant .. ':new-sessions', job_id)
  local line = pools .. redis.call('HGET', key, 'model') .. ':waiting'
  if redis.call('ZREM', line, job_id) == 1 then
    redis.call('ZREM', line .. ':' .. tenant, job_id)
    if redis.call('ZCARD', line .. ':' .. tenant) == 0 then redis.call('SREM', line .. '-tenants', tenant) end
  end
end
redis.call('XADD', log, 'MAXLEN', '~', """ + str(LOG_ENTRIES) + """, '*', 'event', new, 'data', log_data)
if ttl ~= '' then
  redis.call('EXPIRE', key, ttl)
  redis.call('EXPIRE', log, ttl)
end
redis.call('PUBLISH', channel, new)
return 1
"""

# A delivery takes the job: {'taken', tenant, created_at, parked_at, handed_at} unless it is
# final, or another delivery's lease on it is still live ('held': this delivery is a
# duplicate and must not run). A lease held by nobody (a handed job's) is anyone's.
_TAKE = """
local key, leases = KEYS[1], KEYS[2]
local job_id, token, now, expiry = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local status = redis.call('HGET', key, 'status')
if not status then return 'missing' end
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then return 'final' end
local holder = redis.call('HGET', key, 'delivery')
local lease = redis.call('ZSCORE', leases, job_id)
if holder and holder ~= '' and holder ~= token and lease and tonumber(lease) > now then return 'held' end
redis.call('HSET', key, 'delivery', token)
redis.call('HINCRBY', key, 'deliveries', 1)
redis.call('ZADD', leases, expiry, job_id)
return {'taken', unpack(redis.call('HMGET', key, 'tenant', 'created_at', 'parked_at', 'handed_at'))}
"""

# Push the lease out while the delivery still holds the job; 0 when it has lost it.
_RENEW = """
if redis.call('HGET', KEYS[1], 'delivery') ~= ARGV[2] then return 0 end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

# Release a lapsed lease so the job can be sent again: only if it is still lapsed (another
# requeuer, or a late renewal, may have come first) and the job is not final. Returns the
# kept request, or nothing.
_RELEASE_LAPSED = """
local key, leases = KEYS[1], KEYS[2]
local job_id, now = ARGV[1], tonumber(ARGV[2])
local lease = redis.call('ZSCORE', leases, job_id)
if not lease or tonumber(lease) > now then return false end
redis.call('ZREM', leases, job_id)
local status = redis.call('HGET', key, 'status')
if not status or status == 'succeeded' or status == 'failed' or status == 'cancelled' then return false end
redis.call('HSET', key, 'delivery', '')
redis.call('HINCRBY', key, 'requeued', 1)
return redis.call('HGET', key, 'request') or false
"""


class JobStore:
    def __init__(self, redis: Redis, deployment: str, result_ttl_s: int = 86400, pending_ttl_s: int = 7 * 86400):
        self.redis = redis
        self.keys = Keys(deployment)
        self.result_ttl_s = result_ttl_s
        self.pending_ttl_s = pending_ttl_s
        self._create = redis.register_script(_CREATE)
        self._transition = redis.register_script(_TRANSITION)
        self._take = redis.register_script(_TAKE)
        self._renew = redis.register_script(_RENEW)
        self._release_lapsed = redis.register_script(_RELEASE_LAPSED)
        self.leases = self.keys.job_leases
        self.events = JobEvents(redis, self.keys.job_events(""))  # its listener starts on the first wait
        self.log = JobLog(redis, self.keys, pending_ttl_s)

    def create(self, job_id: str, *, tenant: str, model: str, session_id: str, request: dict,
               limits: TenantLimits, new_session: bool | None = None) -> dict | None:
        """Record a queued job and return it (as get would); None, and nothing changed,
        if the id exists already. `request` (the task's kwargs) is kept until the job ends,
        so that the job can be sent again if its worker dies. Raises LimitExceeded when the
        tenant is over a limit (a new session counts against its sessions; None: new unless
        the session was started before). The session is marked started."""
        now = time.time()
        fields = {"id": job_id, "tenant": tenant, "model": model, "session_id": session_id,
                  "status": "queued", "created_at": repr(now), "request": json.dumps(request)}
        keys = [self.keys.job(job_id), *(self.keys.tenant(tenant, part)
                                         for part in ("jobs", "sessions", "new-sessions", "rate")),
                self.keys.job_log(job_id), self.keys.session_started(tenant_session(tenant, session_id))]
        new = "?" if new_session is None else int(new_session)
        args = [self.pending_ttl_s, now, now - self.pending_ttl_s, job_id, new,
                limits.submissions_per_second, limits.jobs_in_flight, limits.sessions]
        outcome = self._create(keys=keys, args=[*args, *(x for item in fields.items() for x in item)])
        if outcome == "exists":
            return None
        outcome, _, new_session = outcome.partition(":")  # created:<1 if it started its session, else 0>
        if outcome != "created":
            raise LimitExceeded(tenant, outcome, getattr(limits, outcome))
        return fields | {"new_session": new_session}

    def refuse(self, job_id: str, *, tenant: str, model: str, session_id: str, error: GreenroomError) -> None:
        """Record a job that was not admitted (a send_task job over its tenant's limits) as
        failed, so that it reads as such, not as unknown; its tenant's counts are untouched."""
        fields = {"id": job_id, "tenant": tenant, "model": model, "session_id": session_id, "status": "failed",
                  "created_at": repr(time.time()), "finished_at": repr(time.time()),
                  "error": json.dumps({"code": error.code, "message": str(error)})}
        with self.redis.pipeline() as pipe:
            pipe.hset(self.keys.job(job_id), mapping=fields)
            pipe.expire(self.keys.job(job_id), self.result_ttl_s)
            pipe.execute()

    def start_stream(self, job_id: str, delivery: str) -> bool:
        """This delivery starts streaming the job's reply; False if an earlier delivery had
        begun to (its chunks are in the log: readers are told to start over)."""
        earlier = self.redis.hget(self.keys.job(job_id), "streamed_by")
        self.redis.hset(self.keys.job(job_id), "streamed_by", delivery)
        return earlier in (None, delivery)

    def session_started(self, session: str) -> bool:
        return bool(self.redis.exists(self.keys.session_started(session)))

    def get(self, job_id: str) -> dict | None:
        fields = self.redis.hgetall(self.keys.job(job_id))
        if "status" not in fields:
            return None
        for name in ("result", "error"):
            if name in fields:
                fields[name] = json.loads(fields[name])
        return fields

    def transition(self, job_id: str, status: str, allowed_from: tuple[str, ...] = (), delivery: str = "",
                   **fields) -> bool:
        """Move the job to status (see _TRANSITION); with a delivery token, only while that
        delivery holds the job."""
        ttl = self.result_ttl_s if status in FINAL else ""
        pairs = [str(x) for k, v in fields.items() for x in (k, json.dumps(v) if isinstance(v, dict) else v)]
        log_data = json.dumps({k: v for k, v in fields.items() if k in LOGGED_FIELDS})
        keys = [self.keys.job(job_id), self.keys.job_events(job_id), self.leases, self.keys.job_log(job_id)]
        return bool(self._transition(keys=keys, args=[status, ",".join(allowed_from), ttl, delivery, job_id,
                                                      self.keys.tenant(""), log_data, self.keys.pools, *pairs]))

    def succeed(self, job_id: str, result: dict, delivery: str = "") -> bool:
        return self.transition(job_id, "succeeded", delivery=delivery, result=result, finished_at=repr(time.time()))

    def fail(self, job_id: str, code: str, message: str, delivery: str = "") -> bool:
        error = {"code": code, "message": message}
        return self.transition(job_id, "failed", delivery=delivery, error=error, finished_at=repr(time.time()))

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or waiting job; counted in its pool's jobs_cancelled (once: a job
        is cancelled at most once)."""
        if not self.transition(job_id, "cancelled", allowed_from=CANCELLABLE, finished_at=repr(time.time())):
            return False
        if model := self.redis.hget(self.keys.job(job_id), "model"):
            self.redis.hincrby(self.keys.pool(model, "stats"), "jobs_cancelled", 1)
        return True

    # deliveries and their leases
    def take(self, job_id: str, delivery: str, lease_s: float) -> tuple[str, dict]:
        """('taken', the job's tenant, created_at and waited_s (parked in line)) when this
        delivery serves the job, under a lease of lease_s; else ('final' | 'held' | 'missing', {}): 'held', another
        delivery's lease is live, so this one is a duplicate."""
        now = time.time()
        outcome = self._take(keys=[self.keys.job(job_id), self.leases], args=[job_id, delivery, now, now + lease_s])
        if isinstance(outcome, list):
            _, tenant, created_at, parked_at, handed_at = outcome
            waited_s = float(handed_at) - float(parked_at) if parked_at and handed_at else 0.0
            return "taken", {"tenant": tenant, "created_at": float(created_at), "waited_s": waited_s}
        return outcome, {}

    def renew(self, job_id: str, delivery: str, lease_s: float) -> bool:
        """Push the lease out; False once the delivery no longer holds the job."""
        expiry = time.time() + lease_s
        return bool(self._renew(keys=[self.keys.job(job_id), self.leases], args=[job_id, delivery, expiry]))

    def requeue_lapsed(self, send: Callable[[str, dict], None]) -> list[str]:
        """Send again every unfinished job whose lease lapsed (its worker died): send(job_id,
        kwargs) must queue the task under the same id. A send that fails is retried at the
        next call. Returns the ids sent."""
        now = time.time()
        sent = []
        for job_id in self.redis.zrangebyscore(self.leases, "-inf", now):
            request = self._release_lapsed(keys=[self.keys.job(job_id), self.leases], args=[job_id, now])
            if not request:
                continue
            try:
                send(job_id, json.loads(request))
            except Exception:
                self.redis.zadd(self.leases, {job_id: now})  # lapsed still: the next call retries
                raise
            sent.append(job_id)
        return sent

    def follow(self, job_id: str, after: str, until: float, idle_s: float, *stops: threading.Event
               ) -> Iterator[Entry | None]:
        """The job's log entries after the id `after`, as they are written, until one of a
        final state, or until `until` (monotonic time) or a stop; None after each idle_s
        without one (time for a keep-alive). Woken by the job's events, as wait is."""
        with self.events.watch(job_id) as changed:
            while time.monotonic() < until and not any(stop.is_set() for stop in stops):
                changed.clear()  # before reading: an entry written meanwhile sets it again
                entries = self.log.read(job_id, after)
                for entry in entries:
                    yield entry
                    if entry.event in FINAL:
                        return
                    after = entry.id
                if not entries and not changed.wait(max(0.0, min(idle_s, until - time.monotonic()))):
                    yield None

    def wait(self, job_id: str, timeout: float, *stops: threading.Event) -> dict | None:
        """The job once final, or as it stands when timeout passes or one of stops is set
        (long polling; whoever sets a stop wakes the waiters: job_events.wake_every_waiter,
        or events.wake(job_id)). Woken by the job's events; re-read every REREAD_S all the
        same, so a lost event delays an answer, never loses it."""
        deadline = time.monotonic() + timeout
        with self.events.watch(job_id) as changed:  # watch first, then read: no event is missed
            job = self.get(job_id)
            reread_at = time.monotonic() + REREAD_S
            while job and job["status"] not in FINAL and (left := deadline - time.monotonic()) > 0:
                if any(stop.is_set() for stop in stops):
                    break
                if changed.wait(min(left, REREAD_S)) or time.monotonic() >= reread_at:
                    changed.clear()
                    job = self.get(job_id)
                    reread_at = time.monotonic() + REREAD_S
        if job and job["status"] not in FINAL:
            job = self.get(job_id)
        return job
