"""The worker's Celery app: `celery -A workers.app worker|beat|flower`."""

from pool_manager.settings import get_settings

from . import brokerfix
from .config import make_celery

brokerfix.apply()  # a worker survives its broker connection dropping mid-job
app = make_celery(get_settings())
app.conf.include = ["workers.tasks"]
