"""The worker's Celery app: `celery -A workers.app worker|beat|flower`."""

import logging

from celery.signals import after_setup_logger

from pool_manager.settings import get_settings

from . import brokerfix
from .config import make_celery

brokerfix.apply()  # a worker survives its broker connection dropping mid-job
app = make_celery(get_settings())
app.conf.include = ["workers.tasks"]


@after_setup_logger.connect
def _quiet_http_clients(loglevel=None, **_) -> None:
    """httpx logs every request at INFO: every health probe of every booting container, a
    few lines a second. They show with --loglevel debug only."""
    if (loglevel or logging.INFO) > logging.DEBUG:
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
