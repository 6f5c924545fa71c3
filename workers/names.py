"""Task and queue names: a public API (send_task users and the API depend on them)."""

CHAT_TASK = "greenroom.chat"
CHAT_QUEUE = "greenroom.chat"
PING_TASK = "greenroom.ping"  # a no-op on the chat queue: the floor of a Celery round trip
POOL_QUEUE = "greenroom.pool"
RECONCILE_TASK = "greenroom.pool.reconcile"
RECONCILE_ALL_TASK = "greenroom.pool.reconcile_all"
CLOSE_SESSION_TASK = "greenroom.pool.close_session"
REQUEUE_TASK = "greenroom.pool.requeue_lapsed_jobs"
