"""The one Celery configuration, shared by every process on the broker (API, workers,
beat, Flower): above all the same visibility timeout everywhere."""

from celery import Celery

from pool_manager.settings import Settings

from .names import CHAT_QUEUE, POOL_QUEUE, RECONCILE_ALL_TASK, REQUEUE_TASK


def celery_config(settings: Settings) -> dict:
    # A message whose worker died returns to its queue once visibility_timeout passes; the
    # sweep that returns it runs every 5 s rather than kombu's default of every 100 s.
    transport = {"visibility_timeout": settings.visibility_timeout_s,
                 "unacked_restore_interval": 5, "unacked_restore_throttle": 1}
    return dict(
        broker_url=settings.broker,
        result_backend=settings.redis_url,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        result_expires=settings.result_ttl_s,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        worker_deduplicate_successful_tasks=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        task_default_queue=CHAT_QUEUE,
        task_routes={"greenroom.pool.*": {"queue": POOL_QUEUE}, "greenroom.chat": {"queue": CHAT_QUEUE}},
        beat_schedule={
            "reconcile-pools": {
                "task": RECONCILE_ALL_TASK,
                "schedule": settings.reconcile_interval_s,
                "options": {"expires": settings.reconcile_interval_s, "queue": POOL_QUEUE, "ignore_result": True},
            },
            "requeue-lapsed-jobs": {  # a dead worker's jobs go out again within about a lease
                "task": REQUEUE_TASK,
                "schedule": settings.job_lease_s / 2,
                "options": {"expires": settings.job_lease_s / 2, "queue": POOL_QUEUE, "ignore_result": True},
            },
        },
    )


def make_celery(settings: Settings) -> Celery:
    """A configured app. The API uses it bare, to send tasks by name."""
    app = Celery("greenroom", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app
