"""The public tasks: thin wrappers over pool_manager, which does the work."""

import dataclasses
import time
from functools import lru_cache

from celery.exceptions import Ignore
from celery.signals import worker_process_init, worker_ready

from pool_manager.errors import GreenroomError, RuntimeFailure
from pool_manager.manager import PoolManager
from pool_manager.relay import ChatRelay
from pool_manager.schemas import tenant_session
from pool_manager.settings import SEND_TASK_TENANT, get_settings

from . import oplog
from .app import app
from .names import (CHAT_QUEUE, CHAT_TASK, CLOSE_SESSION_TASK, ENGINE_PASS_TASK, PING_TASK, POOL_QUEUE,
                    RECONCILE_ALL_TASK, RECONCILE_TASK, REQUEUE_TASK, engine_queue)

settings = get_settings()


class ChatFailed(GreenroomError):
    """A chat job ended failed; its record holds the code and message."""

    code = "chat_failed"


@lru_cache(maxsize=1)
def relay() -> ChatRelay:
    """Redis and Docker clients for this process, built on first use (after any fork)."""
    manager = PoolManager(settings, resume=_send_again, engine_work=request_engine_pass)
    return ChatRelay(manager, manager.jobs, request_reconcile)


@worker_process_init.connect
def _fresh_clients_after_fork(**_) -> None:
    relay.cache_clear()


@worker_ready.connect
def _fill_pools_at_start(**_) -> None:
    """Fill the pools as soon as a worker is up, not at beat's first tick."""
    reconcile_all.apply_async(queue=POOL_QUEUE, ignore_result=True)


def request_reconcile(pool: str) -> None:
    """Fire and forget (one per claim): no result stored, none subscribed to."""
    reconcile.apply_async(args=[pool], queue=POOL_QUEUE, expires=settings.reconcile_interval_s * 4,
                          ignore_result=True)


def request_engine_pass(pool: str, engine: str) -> None:
    """Ask that engine's own worker for its share of the pool's reconcile (engines.py)."""
    engine_pass.apply_async(args=[pool, engine, time.time()], queue=engine_queue(engine),
                            expires=settings.engine_grace_s, ignore_result=True)


@app.task(name=CHAT_TASK, bind=True, time_limit=settings.chat_time_limit_s,
          soft_time_limit=settings.chat_time_limit_s - 10, throws=(ChatFailed,))  # logged by oplog, no traceback
def chat(self, model: str, messages: list, session_id: str | None = None, options: dict | None = None,
         stream: bool = False) -> dict:
    """Serve one chat message; the job id is the task id. With stream, the reply's chunks
    go to the job's log as they come (GET /v1/jobs/<id>/events); the result is whole."""
    record = relay().serve(self.request.id, model, messages, session_id, options, stream)
    oplog.job_ended(record)
    if record is None:  # a duplicate, or parked to be sent again: acknowledged, nothing stored
        raise Ignore()
    if record["status"] == "failed":
        raise ChatFailed(f"{record['error']['code']}: {record['error']['message']}")
    return record


@app.task(name=PING_TASK)
def ping() -> str:
    """Does nothing: send_task + get of it measures the bare Celery round trip."""
    return "pong"


@app.task(name=RECONCILE_TASK)
def reconcile(pool: str) -> dict | None:
    return oplog.reconcile(relay().manager, pool)


@app.task(name=ENGINE_PASS_TASK)
def engine_pass(pool: str, engine: str, asked_at: float = 0.0) -> dict | None:
    """Only the worker of `engine` consumes its queue; any other drops it."""
    manager = relay().manager
    if engine != manager.engine:
        return None
    try:
        report = manager.engine_pass(pool, asked_at)
    except RuntimeFailure:  # recorded as the engine's error (pool status, metrics): no traceback a pass
        return None
    return dataclasses.asdict(report) if report else None


@app.task(name=RECONCILE_ALL_TASK)
def reconcile_all() -> list[str]:
    """Beat's safety net: one reconcile per pool, each under its own lock."""
    pools = list(settings.pools)
    for pool in pools:
        reconcile.apply_async(args=[pool], queue=POOL_QUEUE, expires=settings.reconcile_interval_s,
                              ignore_result=True)
    return pools


@app.task(name=REQUEUE_TASK)
def requeue_lapsed_jobs() -> list[str]:
    """Send again, under the same id, every job whose worker stopped renewing its lease."""
    return relay().jobs.requeue_lapsed(_send_again)


def _send_again(job_id: str, kwargs: dict) -> None:
    """Send a job again under its id: its worker died, or it was handed a container."""
    # HTTP jobs keep their result in the job record; send_task callers read Celery's backend.
    from_http = (relay().jobs.get(job_id) or {}).get("tenant") != SEND_TASK_TENANT
    chat.apply_async(kwargs=kwargs, task_id=job_id, queue=CHAT_QUEUE, ignore_result=from_http)


@app.task(name=CLOSE_SESSION_TASK)
def close_session(session_id: str, tenant: str = SEND_TASK_TENANT) -> bool:
    """End a session (of send_task's tenant, unless another is named); False if none was active."""
    return relay().manager.close_session(tenant_session(tenant, session_id))
