"""Job records: written at submit time (so an unknown id is a 404, never an eternal
"pending"), moved through their states by the worker, and awaited by long polls.

    queued -> waiting_for_container -> running -> succeeded | failed
    queued | waiting_for_container -> cancelled

A final state is never left: a redelivered job finds its result and does not run again.
"""

import json
import threading
import time

from redis import Redis

from .job_events import JobEvents

FINAL = ("succeeded", "failed", "cancelled")
CANCELLABLE = ("queued", "waiting_for_container")
REREAD_S = 1.0  # a long poll re-reads its job at least this often, events or not
STOP_CHECK_S = 0.25  # and checks this often whether its server is stopping

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# Set fields and the status unless the job is already final (or, when allowed_from is
# given, unless its status is not one of those). Publishes the new status on the channel.
_TRANSITION = """
local key, channel = KEYS[1], KEYS[2]
local status = redis.call('HGET', key, 'status')
if not status then return 0 end
if ARGV[1] == 'succeeded' or ARGV[1] == 'failed' or ARGV[1] == 'cancelled' then
  if status == 'succeeded' or status == 'failed' or status == 'cancelled' then return 0 end
elseif status == 'succeeded' or status == 'failed' or status == 'cancelled' then return 0 end
if ARGV[2] ~= '' then
  local allowed = false
  for s in string.gmatch(ARGV[2], '[^,]+') do if s == status then allowed = true end end
  if not allowed then return 0 end
end
redis.call('HSET', key, 'status', ARGV[1])
for i = 4, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
if ARGV[3] ~= '' then redis.call('EXPIRE', key, ARGV[3]) end
redis.call('PUBLISH', channel, ARGV[1])
return 1
"""


class JobStore:
    def __init__(self, redis: Redis, deployment: str, result_ttl_s: int = 86400, pending_ttl_s: int = 7 * 86400):
        self.redis = redis
        self.prefix = f"greenroom:{deployment}:"
        self.result_ttl_s = result_ttl_s
        self.pending_ttl_s = pending_ttl_s
        self._create = redis.register_script(_CREATE)
        self._transition = redis.register_script(_TRANSITION)
        self.events = JobEvents(redis, self.channel(""))  # its listener starts on the first wait

    def key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def channel(self, job_id: str) -> str:
        return f"{self.prefix}job-events:{job_id}"

    def create(self, job_id: str, *, tenant: str, model: str, session_id: str) -> dict | None:
        """Record a queued job and return it (as get would); None, and nothing changed,
        if the id exists already."""
        fields = {"id": job_id, "tenant": tenant, "model": model, "session_id": session_id,
                  "status": "queued", "created_at": repr(time.time())}
        pairs = [x for item in fields.items() for x in item]
        return fields if self._create(keys=[self.key(job_id)], args=[self.pending_ttl_s, *pairs]) else None

    def own_session(self, session_id: str, tenant: str) -> bool:
        """Bind a session id to a tenant on first use; True if it is (now) theirs."""
        key = f"{self.prefix}session-owner:{session_id}"
        self.redis.set(key, tenant, nx=True, ex=self.pending_ttl_s)
        return self.redis.get(key) == tenant

    def session_owner(self, session_id: str) -> str | None:
        return self.redis.get(f"{self.prefix}session-owner:{session_id}")

    def get(self, job_id: str) -> dict | None:
        fields = self.redis.hgetall(self.key(job_id))
        if "status" not in fields:
            return None
        for name in ("result", "error"):
            if name in fields:
                fields[name] = json.loads(fields[name])
        return fields

    def transition(self, job_id: str, status: str, allowed_from: tuple[str, ...] = (), **fields) -> bool:
        ttl = self.result_ttl_s if status in FINAL else ""
        pairs = [str(x) for k, v in fields.items() for x in (k, json.dumps(v) if isinstance(v, dict) else v)]
        return bool(self._transition(keys=[self.key(job_id), self.channel(job_id)],
                                     args=[status, ",".join(allowed_from), ttl, *pairs]))

    def succeed(self, job_id: str, result: dict) -> bool:
        return self.transition(job_id, "succeeded", result=result, finished_at=repr(time.time()))

    def fail(self, job_id: str, code: str, message: str) -> bool:
        error = {"code": code, "message": message}
        return self.transition(job_id, "failed", error=error, finished_at=repr(time.time()))

    def cancel(self, job_id: str) -> bool:
        return self.transition(job_id, "cancelled", allowed_from=CANCELLABLE, finished_at=repr(time.time()))

    def wait(self, job_id: str, timeout: float, stop: threading.Event | None = None) -> dict | None:
        """The job once final, or as it stands when timeout passes or stop is set (long
        polling). Woken by the job's events; re-read every REREAD_S all the same, so a
        lost event delays an answer, never loses it."""
        deadline = time.monotonic() + timeout
        with self.events.watch(job_id) as changed:  # watch first, then read: no event is missed
            job = self.get(job_id)
            reread_at = time.monotonic() + REREAD_S
            while job and job["status"] not in FINAL and (left := deadline - time.monotonic()) > 0:
                if stop is not None and stop.is_set():
                    break
                if changed.wait(min(left, STOP_CHECK_S)) or time.monotonic() >= reread_at:
                    changed.clear()
                    job = self.get(job_id)
                    reread_at = time.monotonic() + REREAD_S
        if job and job["status"] not in FINAL:
            job = self.get(job_id)
        return job
