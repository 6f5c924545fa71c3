"""The worker's Celery app: `celery -A workers.app worker|beat|flower`."""

import logging

from celery.signals import after_setup_logger

from pool_manager.settings import get_settings

from . import brokerfix
from .config import make_celery

brokerfix.apply()  # a worker survives its broker connection dropping mid-job
settings = get_settings()
app = make_celery(settings)
app.conf.include = ["workers.tasks"]

# Celery's line for every task received and finished (with its whole result) and every
# beat tick: with --verbose (settings.verbose) only. workers/oplog.py says what changed.
CHATTY = ("celery.worker.strategy", "celery.app.trace", "celery.beat")


class _SkipTaskList(logging.Filter):
    """Flower lists every registered task at start; with --verbose only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Registered tasks")


if not settings.verbose:
    logging.getLogger("flower.command").addFilter(_SkipTaskList())


@after_setup_logger.connect
def _quiet_routine_lines(loglevel=None, **_) -> None:
    """httpx logs every request at INFO: every health probe of every booting container, a
    few lines a second. They show with --loglevel debug only."""
    if (loglevel or logging.INFO) > logging.DEBUG:
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if not settings.verbose:
        for name in CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)
