"""What the workers' log tells an operator: what changed, one line each. A job that failed
for a reason on our side is a WARNING; a client's mistake is an INFO, without a traceback;
a succeeded or cancelled job, nothing (cancelling is the client's doing, counted in
greenroom_jobs_total; a job cancelled while parked in line never returns to a worker). A
pool turning degraded is a WARNING, and whole again an INFO, once per change whichever
worker sees it. (Celery's own line per task and per beat tick shows with --verbose:
workers/app.py.)"""

import dataclasses
import logging

from redis import Redis

from pool_manager.errors import RuntimeFailure
from pool_manager.manager import PoolManager
from pool_manager.overview import PoolOverview

log = logging.getLogger("greenroom")
# A failed job's codes that are the client's doing (the API answers them 4xx).
CLIENT_ERRORS = {"invalid_request", "unknown_model", "limit_exceeded", "session_closed",
                 "session_model_mismatch", "session_busy"}


def job_ended(record: dict | None) -> None:
    if not record or record["status"] == "succeeded":
        return
    where = f"job {record['id']} (tenant {record.get('tenant')}, model {record.get('model')})"
    if record["status"] == "cancelled":
        log.debug("%s cancelled", where)
        return
    error = record.get("error") or {}
    level = logging.INFO if error.get("code") in CLIENT_ERRORS else logging.WARNING
    log.log(level, "%s failed: %s: %s", where, error.get("code"), error.get("message"))


def reconcile(manager: PoolManager, pool: str) -> dict | None:
    """One pass, then the pool's health told if it changed. A runtime that does not answer
    is told that way, not as a traceback every pass."""
    try:
        report = manager.reconcile(pool)
    except RuntimeFailure:
        report = None
    pool_health(manager.redis, PoolOverview(manager.settings, manager.redis), pool, manager.state.keys.pool)
    return dataclasses.asdict(report) if report else None


def pool_health(redis: Redis, overview: PoolOverview, pool: str, key) -> None:
    status = overview.status(pool)
    health = "degraded" if status.degraded else "whole"
    before = redis.set(key(pool, "health"), health, get=True)
    if before == health or (before is None and health == "whole"):
        return
    if status.runtime_error:
        log.warning("pool %s degraded: its runtime does not answer (%s)", pool, status.runtime_error)
    elif status.degraded:
        log.warning("pool %s degraded: its last boots all failed; the next ones back off", pool)
    else:
        log.info("pool %s whole again", pool)
