"""Task and queue names: a public API (send_task users and the API depend on them)."""

CHAT_TASK = "greenroom.chat"
CHAT_QUEUE = "greenroom.chat"
PING_TASK = "greenroom.ping"  # a no-op on the chat queue: the floor of a Celery round trip
POOL_QUEUE = "greenroom.pool"
RECONCILE_TASK = "greenroom.pool.reconcile"
RECONCILE_ALL_TASK = "greenroom.pool.reconcile_all"
CLOSE_SESSION_TASK = "greenroom.pool.close_session"
REQUEUE_TASK = "greenroom.pool.requeue_lapsed_jobs"
ENGINE_PASS_TASK = "greenroom.pool.engine_pass"  # on an engine's own queue: its share of a reconcile


def engine_queue(engine: str) -> str:
    """The queue only that engine's pool worker consumes (engines.py)."""
    return f"{POOL_QUEUE}.{engine}"
