"""Task and queue names: a public API (send_task users and the API depend on them)."""

CHAT_TASK = "greenroom.chat"
CHAT_QUEUE = "greenroom.chat"
POOL_QUEUE = "greenroom.pool"
RECONCILE_TASK = "greenroom.pool.reconcile"
RECONCILE_ALL_TASK = "greenroom.pool.reconcile_all"
CLOSE_SESSION_TASK = "greenroom.pool.close_session"
